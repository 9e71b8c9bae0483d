"""Per-stage costs of screening on this CPU, one process, no Ray: milliseconds of one core per image for decode
(full-resolution ISIC Archive JPEGs, draft mode), segmentation (U-Net), classification (Swin-T 224, ONNX Runtime),
the fast CAM, Grad-CAM in the explainer pool, and writing the Parquet part. The inputs of `docs/capacity.md`.

Models are random-init (compute, not accuracy, is measured); one intra-op thread each, so figures add up per core.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ISIC_ARCHIVE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isic_archive" / "images"


def _ms_per_image(fn, n: int, repeat: int = 3) -> float:
    fn()  # warm
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(1000 * best / n, 2)


def run(workdir: str = "runs/bench", out: str | None = None, images: str | None = None) -> dict:
    import tempfile

    import torch

    from skinscan.bench.common import swin_t_bundle, write_json
    from skinscan.screening.stages import ClassifyStage, ExplainStage, SegmentStage, decode_batch
    from skinscan.screening.writer import write_batch

    torch.set_num_threads(1)
    work = Path(workdir).resolve()
    src = Path(images) if images else ISIC_ARCHIVE
    files = sorted(src.glob("*.jpg"))[:32]
    if not files:
        raise SystemExit(f"no JPEGs in {src}: give --images")
    uris = np.array([str(p) for p in files], object)
    inputs = {"uri": uris, "image_id": np.array([p.stem for p in files], object)}
    cls_bundle = swin_t_bundle(work / "swin_t_224", 224)
    seg_bundle = _unet_bundle(work / "unet_96")
    n = len(files)
    res: dict = {"images": n, "source": str(src), "threads": 1}
    probe = decode_batch(dict(inputs), 224, 0, 10**9)
    res["median_megapixels"] = round(float(np.median(probe["width"].astype(float) * probe["height"])) / 1e6, 1)
    res["decode_ms"] = _ms_per_image(lambda: decode_batch(dict(inputs), 256, 0, 10**9), n, repeat=2)
    decoded = decode_batch(dict(inputs), 256, 128, 10**9)
    seg = SegmentStage(str(seg_bundle), "onnxruntime", "cpu", threads=1)
    res["segment_ms"] = _ms_per_image(lambda: seg(dict(decoded)), n)
    plain = ClassifyStage(str(cls_bundle), "onnxruntime", "cpu", threads=1, explain="none", thumbnails="none")
    res["classify_ms"] = _ms_per_image(lambda: plain(dict(decoded)), n)
    fast = ClassifyStage(str(cls_bundle), "onnxruntime", "cpu", threads=1, explain="all", thumbnails="none")
    res["classify_plus_fast_cam_ms"] = _ms_per_image(lambda: fast(dict(decoded)), n)
    res["fast_cam_ms"] = round(res["classify_plus_fast_cam_ms"] - res["classify_ms"], 2)
    deferred = ClassifyStage(
        str(cls_bundle), "onnxruntime", "cpu", threads=1, explain="all", method="gradcam", thumbnails="none"
    )(dict(decoded))
    grad = ExplainStage(str(cls_bundle), "gradcam", device="cpu", threads=1)
    res["gradcam_ms"] = _ms_per_image(lambda: grad(dict(deferred)), n, repeat=1)
    rows = fast(dict(decoded))
    with tempfile.TemporaryDirectory() as tmp:
        res["write_ms"] = _ms_per_image(lambda: write_batch(dict(rows), tmp), n)
    print("| stage (one core, per image) | ms |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v} |")
    write_json(res, out)
    return res


def _unet_bundle(directory: Path) -> Path:
    import torch

    from conversion.onnx_export import ensure_onnx
    from skinscan.config import ModelConfig
    from skinscan.models import create_model
    from skinscan.models.bundle import save_bundle

    if (directory / "model_card.json").exists():
        return directory
    torch.manual_seed(0)
    kwargs = {"base": 16, "depth": 4}  # the shipped segmenter (configs/train/unet_ham10000_cpu.yaml)
    model = create_model(ModelConfig(name="unet", img_size=96, kwargs=kwargs), num_classes=1)
    card = {"task": "segment", "architecture": {"name": "unet", "kwargs": kwargs}, "input_size": 96, "class_names": []}
    save_bundle(directory, model.eval(), card)
    ensure_onnx(directory)
    return directory
