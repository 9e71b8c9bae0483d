"""Device check of the whole per-image GPU path, prepared to run in one call on a lent GPU machine.

What a screening actor does per image, on the GPU, measured end to end in images/s per batch size:
nvJPEG decode of real JPEGs (torchvision.io) -> resize + normalise on the GPU -> U-Net segmenter and Swin-T
classifier (logits and last feature map) in fp32 / fp16 / bf16 / torch.compile fp16 -> fast CAM from the features.
Every variant is compared with fp32 on the CPU on the same decoded images (max |logit diff|, top-1 agreement,
mask agreement, CAM max |diff|). ONNX Runtime's CUDA provider is measured too where it is installed (the
CPU provider in a dry run).

The GPU machine has torch, torchvision, timm and onnxruntime but neither Ray nor pydantic, so this file imports
nothing from SkinScan's packages except `skinscan/models/unet.py`, loaded by path. Models are random-init
(compute is what is measured). `--dry` runs the same code on the CPU with a tiny Swin and two batch sizes (CI).

    python conversion/device_check.py --images DIR --out conversion/results/device_check_h200.json
    python conversion/device_check.py --dry --out /tmp/device_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TINY_SWIN = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}


def load_unet_class():
    spec = importlib.util.spec_from_file_location("skinscan_unet", ROOT / "skinscan" / "models" / "unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet


def synthetic_jpegs(n: int, size=(1024, 768), seed: int = 0) -> list[bytes]:
    """Smooth lesion-like JPEGs (~1 MP) when no real images are given."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(170, 230, 3)))
        d = ImageDraw.Draw(im)
        cx, cy, r = size[0] // 2 + rng.integers(-80, 80), size[1] // 2 + rng.integers(-60, 60), rng.integers(120, 260)
        d.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=tuple(int(v) for v in rng.integers(40, 140, 3)))
        im = im.filter(ImageFilter.GaussianBlur(6 + i % 5))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def read_jpegs(folder: str | None, n: int) -> tuple[list[bytes], str]:
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if files:
            datas = [p.read_bytes() for p in files]
            return [datas[i % len(datas)] for i in range(n)], f"{len(files)} real JPEGs from {folder}, cycled to {n}"
    return synthetic_jpegs(min(n, 16)) * (n // min(n, 16) + 1), "synthetic ~1 MP JPEGs"


def decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG on CUDA (batched), libjpeg through torchvision on the CPU: uint8 CHW tensors."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    if device.type == "cuda":
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cuda")
    return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]


def preprocess(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Resize each image to size x size (bilinear, antialiased) and normalise: NCHW float32 on the images' device."""
    x = torch.cat(
        [F.interpolate(im[None].float(), size=(size, size), mode="bilinear", antialias=True) for im in images]
    )
    x = x.clamp(0, 255).round() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class Screen(torch.nn.Module):
    """Segmenter + classifier + fast CAM of the predicted class, one forward pass each."""

    def __init__(self, classifier: torch.nn.Module, segmenter: torch.nn.Module, seg_size: int):
        super().__init__()
        self.classifier, self.segmenter, self.seg_size = classifier, segmenter, seg_size
        fc = classifier.get_classifier()
        self.register_buffer("head_w", fc.weight.detach().clone())

    def forward(self, x: torch.Tensor):
        f = self.classifier.forward_features(x)
        logits = self.classifier.forward_head(f)
        f = f.permute(0, 3, 1, 2)  # timm Swin: NHWC -> NCHW
        w = self.head_w[logits.argmax(1)].to(f.dtype)  # N x C
        cam = torch.relu(torch.einsum("nc,nchw->nhw", w, f))
        lo = cam.amin((1, 2), keepdim=True)
        cam = (cam - lo) / (cam.amax((1, 2), keepdim=True) - lo + 1e-7)
        xs = F.interpolate(x, size=(self.seg_size, self.seg_size), mode="bilinear", antialias=False)
        mask = self.segmenter(xs)[:, 0] > 0
        return logits, cam, mask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def end_to_end(model, datas, device, dtype, size, batch, reps) -> float:
    """images/s from JPEG bytes to (logits, CAM, mask) on `device`."""

    def once(chunk):
        x = preprocess(decode(chunk, device), size)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
        return out

    chunks = [datas[i : i + batch] for i in range(0, len(datas) - batch + 1, batch)][: max(1, reps)]
    once(chunks[0])  # warm-up (and compilation)
    once(chunks[0])
    sync(device)
    t = time.perf_counter()
    for c in chunks:
        once(c)
    sync(device)
    return round(len(chunks) * batch / (time.perf_counter() - t), 1)


def parity(ref, got) -> dict:
    (rl, rc, rm), (gl, gc, gm) = ref, got
    return {
        "max_abs_logit_diff": float((rl - gl).abs().max()),
        "top1_agreement": float((rl.argmax(1) == gl.argmax(1)).float().mean()),
        "cam_max_abs_diff": float((rc - gc).abs().max()),
        "mask_agreement": float((rm == gm).float().mean()),
    }


def onnxruntime_check(classifier, x_cpu: np.ndarray, batches, reps, ref_logits, provider: str) -> dict:
    """ONNX Runtime with `provider` (CUDA on the GPU machine; CPU in a dry run, to exercise the same code)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    if provider not in ort.get_available_providers():
        return {"skipped": f"no {provider} (providers: {ort.get_available_providers()})"}
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "classifier.onnx"
        program = torch.onnx.export(
            classifier.cpu().float().eval(),
            (torch.from_numpy(x_cpu[:2]),),
            dynamo=True,
            opset_version=18,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            external_data=False,
        )
        program.save(str(path), external_data=False)
        sess = ort.InferenceSession(str(path), providers=[provider])
        out = sess.run(None, {"input": x_cpu})[0]
        res = {
            "providers": sess.get_providers(),
            "max_abs_logit_diff": float(np.abs(out - ref_logits).max()),
            "top1_agreement": float((out.argmax(1) == ref_logits.argmax(1)).mean()),
            "img_per_s_model_only": {},
        }
        for b in batches:
            xb = np.ascontiguousarray(np.resize(x_cpu, (b, *x_cpu.shape[1:])))
            sess.run(None, {"input": xb})
            t = time.perf_counter()
            for _ in range(reps):
                sess.run(None, {"input": xb})
            res["img_per_s_model_only"][b] = round(reps * b / (time.perf_counter() - t), 1)
        return res


def main(argv: list[str] | None = None) -> dict:
    import timm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", help="folder of real JPEGs (default: synthetic)")
    p.add_argument("--out", help="write the JSON here")
    p.add_argument("--dry", action="store_true", help="CPU, tiny Swin, two batch sizes: checks the script itself")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes")
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.dry
    if not cuda and not a.dry:
        raise SystemExit("device_check: no CUDA device (use --dry to check the script on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    batches = [int(b) for b in a.batches.split(",")] if a.batches else ([2, 4] if a.dry else [1, 8, 32, 64, 128, 256])
    size, seg_size = (64, 32) if a.dry else (224, 224)
    reps = 2 if a.dry else 4
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    kwargs = TINY_SWIN if a.dry else {}
    classifier = timm.create_model("swin_tiny_patch4_window7_224", num_classes=8, img_size=size, **kwargs).eval()
    segmenter = load_unet_class()(base=8 if a.dry else 16, depth=3 if a.dry else 4).eval()
    screen = Screen(classifier, segmenter, seg_size).eval()
    datas, source = read_jpegs(a.images, max(batches) * reps + max(batches))

    # reference: fp32 on the CPU, the same decoded images
    n_par = min(32, len(datas))
    x_cpu = preprocess(decode(datas[:n_par], torch.device("cpu")), size)
    with torch.inference_mode():
        ref = [t.float() if t.dtype != torch.bool else t for t in screen(x_cpu)]
    info = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "dry_run": a.dry,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "images": source,
        "classifier": "swin_tiny_patch4_window7_224" + (" (tiny kwargs)" if a.dry else ""),
        "input_size": size,
        "segmenter_input_size": seg_size,
        "pipeline": "JPEG bytes -> decode (nvJPEG on CUDA) -> resize+normalise -> U-Net + Swin-T -> fast CAM",
        "variants": [],
    }
    model = screen.to(device)
    variants = {"fp32": (model, torch.float32), "fp16": (model, torch.float16), "bf16": (model, torch.bfloat16)}
    if cuda and not a.no_compile:
        variants["compile-fp16"] = (torch.compile(model), torch.float16)
    gpu_x = preprocess(decode(datas[:n_par], device), size)
    for name, (m, dtype) in variants.items():
        if device.type == "cpu" and dtype == torch.float16:
            continue  # no fp16 autocast worth measuring on a CPU
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            got = [t.float().cpu() if t.dtype != torch.bool else t.cpu() for t in m(gpu_x)]
        row = {"variant": name, **parity(ref, got), "img_per_s_end_to_end": {}}
        for b in batches:
            row["img_per_s_end_to_end"][b] = end_to_end(m, datas, device, dtype, size, b, reps)
        info["variants"].append(row)
        print(
            f"{name:13s} logits {row['max_abs_logit_diff']:.2e} top1 {row['top1_agreement']:.3f} "
            f"cam {row['cam_max_abs_diff']:.2e} mask {row['mask_agreement']:.4f}  "
            + "  ".join(f"b{b}:{v:>8.1f}" for b, v in row["img_per_s_end_to_end"].items()),
            flush=True,
        )
    # decode alone, for the share of the path it takes
    t = time.perf_counter()
    chunk = datas[: max(batches)]
    decode(chunk, device)
    sync(device)
    info["decode_img_per_s"] = round(len(chunk) / (time.perf_counter() - t), 1)
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    info["onnxruntime"] = onnxruntime_check(classifier, x_cpu.numpy(), batches, reps, ref[0].numpy(), provider)
    print(json.dumps({k: v for k, v in info.items() if k != "variants"}))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(info, indent=2))
        print(f"-> {a.out}")
    return info


if __name__ == "__main__":
    main()
