"""GPU check for a machine with CUDA and PyTorch only (no Ray, no TensorRT, no SkinScan install needed).

Measures the torch backend on Swin-T (224 px, random init) in img/s at batch 1..256 for fp32, fp16, bf16 and
torch.compile (fp16), checks parity of each against fp32 (max |logit diff|, top-1 agreement), measures nvJPEG
decoding (torchvision.io.decode_jpeg on the GPU) against Pillow, and prints one table (JSON to --out too).

    bash conversion/gpu_check.sh            # or: python conversion/gpu_check.py --out results.json
"""

from __future__ import annotations

import argparse
import io
import json
import time

import torch

BATCHES = (1, 8, 32, 64, 128, 256)


def timed(fn, x, warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main() -> None:
    import timm

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="swin_tiny_patch4_window7_224")
    p.add_argument("--out", default=None)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False, num_classes=8).eval().to(dev)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "model": a.model,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }
    variants = {"fp32": (model, torch.float32), "fp16": (model, torch.float16), "bf16": (model, torch.bfloat16)}
    if not a.no_compile:
        variants["compile-fp16"] = (torch.compile(model), torch.float16)  # compiled lazily, on first call
    x_ref = torch.randn(64, 3, 224, 224, device=dev)
    with torch.inference_mode():
        ref = model(x_ref).float()
    rows = []
    for name, (m, dtype) in variants.items():

        def run(x, m=m, dtype=dtype):
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                return m(x)

        with torch.inference_mode():
            out = run(x_ref).float()
        parity = {
            "max_abs_diff": float((out - ref).abs().max()),
            "top1_agreement": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        }
        speeds = {}
        for b in BATCHES:
            x = torch.randn(b, 3, 224, 224, device=dev)
            speeds[b] = round(b / timed(run, x), 1)
        rows.append({"variant": name, **parity, "img_per_s": speeds})
        print(
            f"{name:13s} max|diff| {parity['max_abs_diff']:.2e} top1 {parity['top1_agreement']:.3f}  "
            + "  ".join(f"b{b}:{v:>8.1f}" for b, v in speeds.items()),
            flush=True,
        )
    info["results"] = rows

    # JPEG decoding: nvJPEG (torchvision.io on the GPU) vs Pillow on one CPU core, ~1 MP images
    try:
        import numpy as np
        import torchvision
        from PIL import Image
        from torchvision.io import decode_jpeg

        rng = np.random.default_rng(0)
        datas = []
        for _ in range(64):
            arr = (rng.random((768, 1024, 3)) * 40 + np.linspace(60, 200, 1024)[None, :, None]).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        decode_jpeg(datas[:4], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            decode_jpeg(datas, device="cuda")
        torch.cuda.synchronize()
        gpu = 5 * len(datas) / (time.perf_counter() - t)
        t = time.perf_counter()
        for d in datas[:32]:
            Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB").load()
        cpu = 32 / (time.perf_counter() - t)
        info["jpeg_decode_img_per_s"] = {
            "nvjpeg_batch64": round(gpu, 1),
            "pillow_1core": round(cpu, 1),
            "torchvision": torchvision.__version__,
        }
        print(f"JPEG 1024x768: nvJPEG {gpu:.0f} img/s, Pillow (1 core) {cpu:.0f} img/s")
    except Exception as err:  # noqa: BLE001 - report, don't fail the whole check
        info["jpeg_decode_error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(info))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
