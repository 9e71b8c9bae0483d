"""Device check of the GPU path as it ships, prepared to run in one call on a lent GPU machine.

It runs SkinScan's own code where that code runs without Ray and pydantic (the GPU machine has torch, torchvision,
timm and onnxruntime, neither Ray nor pydantic): the decode stage's nvJPEG path (`skinscan/data/gpu_decode.py`,
against the CPU path's pixels), the predictors' host<->device staging (`skinscan/runtime/staging.py`: pinned
buffers, copies overlapping compute, one sync a batch) around the U-Net + Swin-T + fast CAM at fp32 / fp16 / bf16
(the model cast as `TorchPredictor` casts it) and torch.compile fp16, and one epoch of the training step
(`skinscan/training/steps.py`: pinned loader memory, no per-step sync). Bundles, cards and Ray actors are not run
here (they need pydantic and Ray). Parity against fp32 on the CPU on the same decoded pixels; the JSON is written
after every step, so a timeout keeps what finished. `--dry` runs the same code on the CPU with a tiny Swin (CI).

    python -m conversion.device_check --images DIR --out conversion/results/device_check_h200.json
    python -m conversion.device_check --dry --out /tmp/device_check.json

(from the repository root: `skinscan.data.gpu_decode` and `skinscan.data.imageio` are imported as modules; they and
their package __init__ files import neither Ray nor pydantic)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TINY_SWIN = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}


def by_path(name: str, relative: str):
    """A SkinScan module loaded from its file, without its package's __init__ (which imports pydantic)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_unet_class():
    return by_path("skinscan_unet", "skinscan/models/unet.py").UNet


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


def decode(datas: list[bytes], device: torch.device, size: int) -> np.ndarray:
    """The decode stage's GPU path (`gpu_decode_jpegs`, as `decode_batch` calls it): NHWC uint8 on the host."""
    from skinscan.data.gpu_decode import gpu_decode_jpegs, read_header

    out = gpu_decode_jpegs(datas, size, [read_header(d, "check", 10**9) for d in datas], device=device.type)
    if any(o is None for o in out):
        raise RuntimeError("a JPEG the GPU path refused")
    return np.stack(out)


def cpu_path(datas: list[bytes], size: int) -> np.ndarray:
    """The decode stage's CPU path: Pillow in draft mode, EXIF orientation, bilinear resize."""
    from skinscan.data.imageio import decode_image, resize_square

    return np.stack([resize_square(decode_image(d, "check", draft_size=size), size) for d in datas])


def normalise(batch_u8: np.ndarray) -> np.ndarray:
    """`data.preprocess.normalize_batch` with ImageNet statistics (that module imports pydantic)."""
    x = batch_u8.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return np.ascontiguousarray((x - np.float32(MEAN)[None, :, None, None]) / np.float32(STD)[None, :, None, None])


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


def end_to_end(run, datas, device, size, batch, reps) -> float:
    """images/s from JPEG bytes to (logits, CAM, mask) on the host, as a screening actor gets them."""
    chunks = [datas[i : i + batch] for i in range(0, len(datas) - batch + 1, batch)][: max(1, reps)]
    run(normalise(decode(chunks[0], device, size)))  # warm-up (and compilation)
    sync(device)
    t = time.perf_counter()
    for c in chunks:
        run(normalise(decode(c, device, size)))
    return round(len(chunks) * batch / (time.perf_counter() - t), 1)


def parity(ref, got) -> dict:
    (rl, rc, rm), (gl, gc, gm) = (
        (torch.as_tensor(np.asarray(t)) for t in ref),
        (torch.as_tensor(np.asarray(t)) for t in got),
    )
    rm, gm = rm > 0.5, gm > 0.5
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


def train_check(device: torch.device, size: int, dry: bool) -> dict:
    """Two epochs of the shipped training step (`steps.train_one_epoch`) on random tensors, loader memory pinned
    and batches moved without blocking as Ray Train moves them; the second epoch timed."""
    import timm

    steps = by_path("skinscan_steps", "skinscan/training/steps.py")
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", num_classes=4, img_size=size, **(TINY_SWIN if dry else {})
    ).to(device)
    n, batch = (32, 8) if dry else (1024, 128)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, size, size), torch.randint(0, 4, (n,)))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, pin_memory=device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    trainee = steps.Trainee(
        model=model,
        unwrapped=model,
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        ema=None,
        criterion=torch.nn.CrossEntropyLoss(),
        mixer=None,
        device=device,
        memory_format=torch.contiguous_format,
        use_amp=device.type == "cuda",
        task="classify",
    )

    def moved():
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    steps.train_one_epoch(trainee, moved())
    sync(device)
    t = time.perf_counter()
    loss_sum, seen, drawn = steps.train_one_epoch(trainee, moved())
    dt = time.perf_counter() - t
    return {"images": seen, "img_per_s": round(seen / dt, 1), "mean_loss": round(loss_sum / seen, 4),
            "classes_drawn": sum(drawn.values()), "batch": batch, "amp_bf16": device.type == "cuda"}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    import timm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", help="folder of real JPEGs (default: synthetic)")
    p.add_argument("--out", help="write the JSON here (after every step)")
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
    staging = by_path("skinscan_staging", "skinscan/runtime/staging.py")
    torch.manual_seed(0)
    kwargs = TINY_SWIN if a.dry else {}
    classifier = timm.create_model("swin_tiny_patch4_window7_224", num_classes=8, img_size=size, **kwargs).eval()
    segmenter = load_unet_class()(base=8 if a.dry else 16, depth=3 if a.dry else 4).eval()
    screen = Screen(classifier, segmenter, seg_size).eval()
    datas, source = read_jpegs(a.images, max(batches) * reps + max(batches))
    info = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "dry_run": a.dry,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "images": source,
        "classifier": "swin_tiny_patch4_window7_224" + (" (tiny kwargs)" if a.dry else ""),
        "input_size": size,
        "segmenter_input_size": seg_size,
        "pipeline": "JPEG bytes -> skinscan/data/gpu_decode.py (nvJPEG on CUDA) -> host uint8 -> normalise -> "
        "skinscan/runtime/staging.py (pinned, overlapped) -> U-Net + Swin-T + fast CAM in the variant's dtype",
        "micro_batch": staging.MICRO_BATCH,
        "steps_done": [],
        "variants": [],
    }

    def save(step: str, what: str, figures: str) -> None:
        info["steps_done"].append(step)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(info, indent=2))
        print(f"[device check] {len(info['steps_done'])}. {step}: {what}: {figures}; JSON written", flush=True)

    # 1. the decode stage's GPU path against its CPU path, and its rate
    n_par = min(32, len(datas))
    gpu_u8, cpu_u8 = decode(datas[:n_par], device, size), cpu_path(datas[:n_par], size)
    diff = np.abs(gpu_u8.astype(int) - cpu_u8)
    t = time.perf_counter()
    decode(datas[: max(batches)], device, size)
    info["decode"] = {
        "vs_cpu_path_mean_abs": round(float(diff.mean()), 3),
        "vs_cpu_path_p99_abs": float(np.percentile(diff, 99)),
        "vs_cpu_path_max_abs": int(diff.max()),
        "img_per_s": round(max(batches) / (time.perf_counter() - t), 1),
    }
    info["decode_img_per_s"] = info["decode"]["img_per_s"]
    d = info["decode"]
    save(
        "decode",
        "skinscan/data/gpu_decode.py against the CPU path (skinscan/data/imageio.py)",
        f"mean |diff| {d['vs_cpu_path_mean_abs']} grey levels, p99 {d['vs_cpu_path_p99_abs']:g}, "
        f"{d['img_per_s']} img/s",
    )

    # 2. the model stages through the shipped staging, each variant against fp32 on the CPU, same pixels
    x_np = normalise(gpu_u8)
    with torch.inference_mode():
        ref = [t.float().numpy() for t in screen(torch.from_numpy(x_np))]
    variants = [("fp32", torch.float32, False), ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)]
    if cuda and not a.no_compile:
        variants.append(("compile-fp16", torch.float16, True))
    for name, dtype, compiled in variants:
        if device.type == "cpu" and dtype == torch.float16:
            continue  # no fp16 kernels worth measuring on a CPU
        model = copy.deepcopy(screen).to(device, dtype)  # cast as TorchPredictor casts it
        if compiled:
            model = torch.compile(model)  # as TorchPredictor compiles; staging pads every micro-batch to 128 rows
        stage = staging.Staging(device)
        run = lambda x, m=model, st=stage, d=dtype: st.run(m, [x], [d])  # noqa: E731
        row = {"variant": name, **parity(ref, run(x_np)), "img_per_s_end_to_end": {}}
        for b in batches:
            row["img_per_s_end_to_end"][b] = end_to_end(run, datas, device, size, b, reps)
        info["variants"].append(row)
        save(
            name,
            "U-Net + Swin-T + fast CAM through skinscan/runtime/staging.py",
            f"logits {row['max_abs_logit_diff']:.2e} top1 {row['top1_agreement']:.3f} cam "
            f"{row['cam_max_abs_diff']:.2e} mask {row['mask_agreement']:.4f}, img/s "
            + " ".join(f"b{b}:{v:.0f}" for b, v in row["img_per_s_end_to_end"].items()),
        )

    # 3. ONNX Runtime (CUDA provider on the GPU machine)
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    info["onnxruntime"] = onnxruntime_check(classifier, x_np, batches, reps, ref[0], provider)
    o = info["onnxruntime"]
    save(
        "onnxruntime", provider, o.get("skipped") or f"logits {o['max_abs_logit_diff']:.2e} top1 {o['top1_agreement']}"
    )
    try:
        import tensorrt  # noqa: F401

        info["tensorrt"] = {"skipped": "installed, but engines are built by skinscan convert (pydantic)"}
    except ImportError:
        info["tensorrt"] = {"skipped": "TensorRT is not installed on this machine"}

    # 4. the training step
    info["training"] = train_check(device, size, a.dry)
    t = info["training"]
    save("training", "skinscan/training/steps.py train_one_epoch", f"{t['img_per_s']} img/s, loss {t['mean_loss']}")
    print(json.dumps({k: v for k, v in info.items() if k != "variants"}))
    if a.out:
        print(f"-> {a.out}")
    return info


if __name__ == "__main__":
    main()
