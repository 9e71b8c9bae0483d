"""Synthetic dermoscopy-like images with exact lesion masks, for the demo and the core tests.

Each image: a skin-toned background with low-frequency shading, a lesion whose colour, size, border
irregularity and texture depend on its class, hairs, and a dermoscope vignette. The mask is the lesion's
exact support. Written as a zip/tar/folder with `images/`, `masks/`, an ISIC 2019 ground-truth CSV and an
ISIC 2019 metadata CSV (lesion_id), so every manifest reader and trainer can consume it.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from skinscan.config import SynthConfig
from skinscan.data.taxonomy import ISIC2019_CLASSES, ISIC2019_OUTPUT_COLUMNS


@dataclass(frozen=True)
class LesionStyle:
    color: tuple[int, int, int]  # main pigment (RGB)
    color2: tuple[int, int, int]  # secondary pigment for texture
    radius: tuple[float, float]  # fraction of the image side (the same for all: size is no shortcut)
    irregularity: float  # 0 round .. 0.35 very irregular border
    texture: str  # "none" | "dots" | "network" | "blobs" | "veil"


STYLES: dict[str, LesionStyle] = {
    "MEL": LesionStyle((60, 35, 30), (70, 80, 120), (0.12, 0.26), 0.30, "veil"),
    "NV": LesionStyle((140, 90, 55), (110, 70, 45), (0.12, 0.26), 0.03, "network"),
    "BCC": LesionStyle((215, 150, 150), (180, 40, 50), (0.12, 0.26), 0.12, "network"),
    "AK": LesionStyle((200, 110, 100), (240, 230, 220), (0.12, 0.26), 0.10, "dots"),
    "BKL": LesionStyle((195, 165, 90), (245, 240, 210), (0.12, 0.26), 0.08, "dots"),
    "DF": LesionStyle((150, 105, 80), (250, 245, 245), (0.12, 0.26), 0.04, "blobs"),
    "VASC": LesionStyle((150, 30, 70), (90, 10, 60), (0.12, 0.26), 0.06, "blobs"),
    "SCC": LesionStyle((225, 190, 170), (200, 60, 40), (0.12, 0.26), 0.18, "dots"),
}


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    small = rng.random((max(2, size // scale), max(2, size // scale))).astype(np.float32)
    im = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


def render(label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (HWC uint8) and its lesion mask (HW bool)."""
    st = STYLES[label]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    skin = np.array([rng.uniform(195, 235), rng.uniform(150, 185), rng.uniform(130, 160)], np.float32)
    shade = 0.88 + 0.2 * _smooth_noise(rng, size, 16)
    img = skin[None, None, :] * shade[..., None]

    cx, cy = size * (0.5 + rng.uniform(-0.08, 0.08)), size * (0.5 + rng.uniform(-0.08, 0.08))
    base_r = size * rng.uniform(*st.radius)
    theta = np.arctan2(yy - cy, xx - cx)
    r_edge = np.full_like(theta, base_r)
    for k in range(2, 7):
        r_edge += base_r * st.irregularity / k**0.5 * rng.uniform(0.3, 1.0) * np.sin(k * theta + rng.uniform(0, 6.3))
    dist = np.hypot(xx - cx, yy - cy)
    mask = dist <= r_edge

    color = np.array(st.color, np.float32) * rng.uniform(0.9, 1.1, 3)
    color2 = np.array(st.color2, np.float32)
    tex = np.zeros((size, size), np.float32)
    if st.texture == "network":
        period = size / rng.uniform(12, 18)
        tex = ((np.sin(xx / period * 6.28) * np.sin(yy / period * 6.28)) > 0.5).astype(np.float32) * 0.6
    elif st.texture == "dots":
        for _ in range(int(rng.integers(8, 20))):
            a, rr = rng.uniform(0, 6.3), rng.uniform(0, 0.8) * base_r
            px, py = cx + rr * np.cos(a), cy + rr * np.sin(a)
            tex = np.maximum(tex, (np.hypot(xx - px, yy - py) < max(1.5, size * 0.02)).astype(np.float32))
    elif st.texture == "blobs":
        for _ in range(int(rng.integers(3, 7))):
            a, rr = rng.uniform(0, 6.3), rng.uniform(0, 0.6) * base_r
            px, py = cx + rr * np.cos(a), cy + rr * np.sin(a)
            tex = np.maximum(tex, (np.hypot(xx - px, yy - py) < base_r * 0.25).astype(np.float32) * 0.8)
    elif st.texture == "veil":
        tex = np.clip(_smooth_noise(rng, size, 6) * 1.6 - 0.5, 0, 1)
    lesion = color[None, None, :] * (1 - tex[..., None]) + color2[None, None, :] * tex[..., None]
    lesion *= (0.9 + 0.2 * _smooth_noise(rng, size, 8))[..., None]
    edge = np.clip((r_edge - dist) / max(1.0, size * 0.01), 0, 1)  # anti-aliased border inside the mask
    alpha = (edge * mask)[..., None]
    img = img * (1 - alpha) + lesion * alpha

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 6))):  # hairs: dark quadratic curves
        p0 = rng.uniform(0, size, 2)
        p1 = p0 + rng.uniform(-size, size, 2) * 0.6
        pc = (p0 + p1) / 2 + rng.uniform(-size, size, 2) * 0.15
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * pc + t**2 * p1
        draw.line([tuple(p) for p in pts], fill=(45, 30, 25), width=max(1, size // 160))
    pil = pil.filter(ImageFilter.GaussianBlur(radius=size / 400))
    img = np.asarray(pil, np.float32)
    vignette = np.clip(1.25 - np.hypot(xx - size / 2, yy - size / 2) / (size * 0.62), 0, 1)
    img = img * vignette[..., None] + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def class_counts(cfg: SynthConfig) -> dict[str, int]:
    """Geometric class sizes from largest (first class) to smallest, ratio `imbalance`, summing to n_images."""
    k = len(cfg.classes)
    weights = np.array([cfg.imbalance ** (-i / max(1, k - 1)) for i in range(k)])
    counts = np.maximum(1, np.floor(weights / weights.sum() * cfg.n_images)).astype(int)
    counts[0] += cfg.n_images - counts.sum()
    return dict(zip(cfg.classes, counts.tolist()))


class _Writer:
    def __init__(self, out: Path, kind_from: Path):
        self.out = out
        low = kind_from.name.lower()
        self.kind = "zip" if low.endswith(".zip") else "tar" if ".tar" in low or low.endswith(".tgz") else "dir"
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "zip":
            self.zf = zipfile.ZipFile(out, "w", zipfile.ZIP_STORED)
        elif self.kind == "tar":
            mode = "w:gz" if low.endswith((".gz", ".tgz")) else "w"
            self.tf = tarfile.open(out, mode)
        else:
            out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, data: bytes) -> None:
        if self.kind == "zip":
            self.zf.writestr(name, data)
        elif self.kind == "tar":
            info = tarfile.TarInfo(name)
            info.size = len(data)
            self.tf.addfile(info, io.BytesIO(data))
        else:
            p = self.out / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)

    def close(self) -> None:
        if self.kind == "zip":
            self.zf.close()
        elif self.kind == "tar":
            self.tf.close()


SITE_BY_CLASS = {"MEL": "posterior torso", "NV": "lower extremity", "BCC": "head/neck", "BKL": "anterior torso"}


def synthetic_metadata(labels: pd.Series, rng: np.random.Generator) -> pd.DataFrame:
    """ISIC-style age, sex and site that depend on the class (older for MEL/BCC/BKL, a typical site per class,
    1 in 5 sites unknown), so a metadata model has something to learn."""
    older = labels.isin(["MEL", "BCC", "BKL", "AK", "SCC"]).to_numpy()
    age = np.where(older, rng.normal(65, 8, len(labels)), rng.normal(35, 8, len(labels))).clip(5, 90).round(-1)
    site = [SITE_BY_CLASS.get(c, "upper extremity") if rng.random() > 0.2 else None for c in labels]
    sex = rng.choice(["male", "female"], len(labels))
    return pd.DataFrame({"age_approx": age, "sex": sex, "anatom_site_general": site}, index=labels.index)


def generate(cfg: SynthConfig, progress: bool = True) -> pd.DataFrame:
    """Write the synthetic dataset to `cfg.output`; return its ground truth (image_id, label)."""
    out = Path(cfg.output)
    tmp = out.with_name(out.name + ".partial")
    counts = class_counts(cfg)
    labels = [c for c, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(labels))
    writer = _Writer(tmp if out.suffix else out, out)
    rows = []
    for i, j in enumerate(tqdm(order, desc="synth", disable=not progress, unit="img")):
        label = labels[j]
        image_id = f"SYN_{cfg.seed:03d}{i:06d}"
        img, mask = render(label, cfg.size, np.random.default_rng([cfg.seed, i]))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=92)
        writer.add(f"images/{image_id}.jpg", buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buf, "PNG")
        writer.add(f"masks/{image_id}_segmentation.png", buf.getvalue())
        rows.append({"image_id": image_id, "label": label})
    gt = pd.DataFrame(rows)
    onehot = pd.DataFrame(0.0, index=gt.index, columns=list(ISIC2019_OUTPUT_COLUMNS))
    for c in ISIC2019_CLASSES:
        onehot.loc[gt["label"] == c, c] = 1.0
    csv = pd.concat([gt["image_id"].rename("image"), onehot], axis=1)
    writer.add("ISIC_2019_Training_GroundTruth.csv", csv.to_csv(index=False).encode())
    meta = pd.DataFrame({"image": gt["image_id"], "lesion_id": "SYNLES_" + gt["image_id"].str[4:]})
    if cfg.metadata:
        meta = pd.concat([meta, synthetic_metadata(gt["label"], np.random.default_rng([cfg.seed, 1]))], axis=1)
    writer.add("ISIC_2019_Training_Metadata.csv", meta.to_csv(index=False).encode())
    writer.close()
    if out.suffix:
        tmp.replace(out)
    return gt
