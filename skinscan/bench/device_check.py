"""Device check of the GPU path as it ships, prepared to run in one call on a lent GPU machine.

It runs the screening stages themselves (`skinscan/screening/stages.py`), without Ray, on random-init Swin-T and
U-Net bundles made here (compute and parity are what is checked): the decode stage with nvJPEG (`decode_batch`,
`gpu_decode=True`) against its CPU path; the segment and classify stages (fast CAM in the classifier) on the torch
backend at fp32, fp16 and bf16; the explain stage with Grad-CAM; the onnxruntime backend on its CUDA provider (the
GPU image's `onnxruntime` is the CPU-only package: recorded as skipped there); the TensorRT backend after
`skinscan convert` where TensorRT imports; two epochs of the shipped training step (`skinscan/training/steps.py`);
last, the costliest, torch.compile (`--compile fp16` by default). Every stage output is compared with the same
stage at fp32 on the CPU, on the same decoded pixels. The JSON is written after every step; a failing step is
recorded and the next one runs; a step that would end past `--budget-s` (300 s) does not start. `--dry` runs the
same code on the CPU with a tiny Swin (CI).

    bash conversion/device_check.sh            # on the GPU machine; wheels carried in .whl (device_wheels.sh)
    bash conversion/device_check.sh --dry      # here and in CI

The GPU machine has torch, torchvision, timm, onnxruntime, pandas and pyarrow, but neither Ray nor pydantic nor
pytorch-grad-cam: nothing here imports Ray, and `conversion/device_wheels.sh` fetches pinned wheels of the rest
(about 3 MB) for the call to carry.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TINY_SWIN = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}
PRECISIONS = ("fp32", "fp16", "bf16")


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


def jpeg_files(folder: str | None, n: int, work: Path) -> tuple[list[str], str]:
    """`n` JPEG paths for the decode stage to read: real ones from `folder` (cycled), else synthetic ones."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg")) if folder else []
    if files:
        return [str(files[i % len(files)]) for i in range(n)], f"{len(files)} real JPEGs from {folder}, cycled to {n}"
    made = []
    for i, data in enumerate(synthetic_jpegs(min(n, 16))):
        made.append(work / f"synthetic_{i}.jpg")
        made[-1].write_bytes(data)
    return [str(made[i % len(made)]) for i in range(n)], "synthetic ~1 MP JPEGs"


def bundle(directory: Path, name: str, kwargs: dict, size: int, task: str = "classify") -> str:
    """A random-init bundle (its ONNX export only where a step needs it: the machine's onnxruntime may have no
    CUDA provider, and exporting Swin-T costs tens of seconds)."""
    from skinscan.config import ModelConfig
    from skinscan.models import create_model
    from skinscan.models.bundle import save_bundle

    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"] if task == "classify" else []
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, img_size=size, kwargs=kwargs), num_classes=len(classes) or 1)
    card = {"task": task, "architecture": {"name": name, "kwargs": kwargs}, "input_size": size, "class_names": classes}
    return str(save_bundle(directory, model.eval(), card))


def decoded(uris: list[str], size: int, gpu: bool) -> dict:
    """The decode stage on one batch (`gpu`: nvJPEG, else Pillow)."""
    from skinscan.screening.stages import decode_batch

    return decode_batch({"uri": np.array(uris, object), "image_id": np.array(uris, object)}, size, 0, 10**9, gpu)


def screened(stages: list, batch: dict) -> dict:
    for stage in stages:
        batch = stage(dict(batch))  # the segment stage updates its batch in place
    return batch


def parity(ref: dict, got: dict) -> dict:
    """A stage output against the reference rows (CPU, fp32, same pixels): probabilities, top-1 class, flag, CAM
    and mask, as they are stored."""
    from skinscan.explain.encode import decode_map
    from skinscan.screening.schema import PROB_COLUMNS

    out: dict = {}
    if "prob_mel" in ref or PROB_COLUMNS[0] in ref:
        p_ref = np.stack([np.asarray(ref[c], float) for c in PROB_COLUMNS], 1)
        p_got = np.stack([np.asarray(got[c], float) for c in PROB_COLUMNS], 1)
        out["max_abs_prob_diff"] = float(np.nanmax(np.abs(p_ref - p_got)))
        out["top1_agreement"] = float(np.mean(np.asarray(ref["predicted_class"]) == np.asarray(got["predicted_class"])))
        out["flag_agreement"] = float(np.mean(np.asarray(ref["flagged"]) == np.asarray(got["flagged"])))
    maps = [(r, g) for r, g in zip(ref.get("heatmap_png", []), got.get("heatmap_png", [])) if r and g]
    if maps:
        out["cam_max_abs_diff"] = float(max(np.abs(decode_map(r) - decode_map(g)).max() for r, g in maps))
    masks = [(r, g) for r, g in zip(ref.get("mask_png", []), got.get("mask_png", [])) if r and g]
    if masks:
        same = [np.mean((decode_map(r) > 0.5) == (decode_map(g) > 0.5)) for r, g in masks]
        out["mask_agreement"] = float(np.mean(same))
    return out


def rate(run, uris: list[str], batch: int, reps: int) -> float:
    """images/s of `run` over `reps` batches of `batch` paths (after one warm-up batch: allocation, compilation)."""
    chunks = [uris[i : i + batch] for i in range(0, len(uris) - batch + 1, batch)][: reps + 1]
    run(chunks[0])
    t = time.perf_counter()
    for c in chunks[1:]:
        run(c)
    return round((len(chunks) - 1) * batch / (time.perf_counter() - t), 1)


def train_check(device: torch.device, size: int, dry: bool) -> dict:
    """Two epochs of the shipped training step (`steps.train_one_epoch`) on random tensors, loader memory pinned
    and batches moved without blocking as Ray Train moves them; the second epoch timed."""
    import timm

    from skinscan.training import steps

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
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    loss_sum, seen, drawn = steps.train_one_epoch(trainee, moved())
    dt = time.perf_counter() - t
    return {"images": seen, "img_per_s": round(seen / dt, 1), "mean_loss": round(loss_sum / seen, 4),
            "classes_drawn": sum(drawn.values()), "batch": batch, "amp_bf16": device.type == "cuda"}  # fmt: skip


def stage_ms(rows: dict) -> dict:
    """Mean per-image milliseconds of each stage in a batch's rows (the stages record them): the GPU's share of
    an end-to-end rate that decode and PNG encoding on one CPU thread may bound."""
    cols = {"decode": "t_decode_ms", "segment": "t_segment_ms", "classify": "t_classify_ms", "explain": "t_explain_ms"}
    return {k: round(float(np.nanmean(rows[c])), 3) for k, c in cols.items() if c in rows}


COMPILE_S = 150
"""What a torch.compile variant is budgeted (U-Net and Swin-T, one padded micro-batch shape): it starts only when
this much of the budget is left."""


def main(argv: list[str] | None = None) -> dict:
    import timm

    from skinscan.data.gpu_decode import gpu_decode_jpegs, read_header
    from skinscan.data.imageio import decode_image, resize_square
    from skinscan.runtime.staging import MICRO_BATCH
    from skinscan.screening.stages import ClassifyStage, ExplainStage, SegmentStage

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", help="folder of real JPEGs (default: synthetic)")
    p.add_argument("--out", help="write the JSON here (after every step)")
    p.add_argument("--dry", action="store_true", help="CPU, tiny Swin, two batch sizes: checks the script itself")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes")
    p.add_argument("--compile", default="fp16", help="precisions to also run compiled (comma-separated; '' none)")
    p.add_argument("--budget-s", type=float, default=300, help="start no step that would end past this")
    a = p.parse_args(argv)
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not a.dry
    if not cuda and not a.dry:
        raise SystemExit("device_check: no CUDA device (use --dry to check the script on the CPU)")
    dev = "cuda" if cuda else "cpu"
    batches = [int(b) for b in a.batches.split(",")] if a.batches else ([2, 4] if a.dry else [8, 64, 256])
    size, seg_size = (64, 32) if a.dry else (224, 224)
    reps = 2 if a.dry else 3
    work = Path(tempfile.mkdtemp(prefix="skinscan-device-check-"))
    uris, source = jpeg_files(a.images, max(batches) * (reps + 1), work)
    n_par = min(32, len(uris))
    info: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "dry_run": a.dry,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "images": source,
        "classifier": "swin_tiny_patch4_window7_224" + (" (tiny kwargs)" if a.dry else ""),
        "input_size": size,
        "segmenter_input_size": seg_size,
        "pipeline": "skinscan/screening/stages.py without Ray: decode_batch (nvJPEG on CUDA) -> SegmentStage -> "
        "ClassifyStage (fast CAM) [-> ExplainStage (Grad-CAM)], torch backend through skinscan/runtime/staging.py",
        "micro_batch": MICRO_BATCH,
        "parity_images": n_par,
        "steps_done": [],
        "steps_failed": {},
        "steps_skipped": {},
        "variants": [],
    }

    def write() -> None:
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(info, indent=2))

    def step(name: str, what: str, fn, needs_s: float = 0.0) -> None:
        """Run one step: its figures line and the JSON after it; a failure is recorded (first line) and the next
        step runs; a step that would end past the budget does not start."""
        left = a.budget_s - (time.perf_counter() - started)
        if left < needs_s or left <= 0:
            info["steps_skipped"][name] = f"{left:.0f} s of the {a.budget_s:.0f} s budget left, {needs_s:.0f} s needed"
            print(f"[device check] skipped {name}: {info['steps_skipped'][name]}", flush=True)
            write()
            return
        t = time.perf_counter()
        try:
            figures = fn()
        except Exception as err:  # noqa: BLE001 - recorded; the other steps still run
            info["steps_failed"][name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"[device check] FAILED {name}: {info['steps_failed'][name]}", flush=True)
            write()
            return
        info["steps_done"].append(name)
        write()
        print(
            f"[device check] {len(info['steps_done'])}. {name}: {what}: {figures} ({time.perf_counter() - t:.0f} s); "
            "JSON written",
            flush=True,
        )

    # 1. decode: nvJPEG (torchvision's CPU decoder in a dry run: the same code) against the CPU path's pixels
    def decode_step() -> str:
        datas = [Path(u).read_bytes() for u in uris[:n_par]]
        gpu = gpu_decode_jpegs(datas, size, [read_header(d, "check", 10**9) for d in datas], dev)
        kept = [i for i, g in enumerate(gpu) if g is not None]  # refused ones fall back to the CPU path in the stage
        cpu = np.stack([resize_square(decode_image(datas[i], "check", draft_size=size), size) for i in kept])
        diff = np.abs(np.stack([gpu[i] for i in kept]).astype(int) - cpu)
        d = info["decode"] = {
            "refused_by_gpu_path": len(datas) - len(kept),
            "vs_cpu_path_mean_abs": round(float(diff.mean()), 3),
            "vs_cpu_path_p99_abs": float(np.percentile(diff, 99)),
            "vs_cpu_path_max_abs": int(diff.max()),
            "stage_img_per_s": {b: rate(lambda c: decoded(c, size, cuda), uris, b, reps) for b in batches},
        }
        return (
            f"mean |diff| {d['vs_cpu_path_mean_abs']} grey levels, p99 {d['vs_cpu_path_p99_abs']:g}, "
            f"{d['refused_by_gpu_path']} refused, img/s "
            + " ".join(f"b{b}:{v:.0f}" for b, v in d["stage_img_per_s"].items())
        )

    step("decode", f"gpu_decode_jpegs ({dev}) against the CPU path; decode_batch (gpu_decode={cuda}) rate", decode_step)

    # 2. segment + classify stages, each variant against the same stages at fp32 on the CPU, same pixels
    swin = TINY_SWIN if a.dry else {}
    cls_bundle = bundle(work / "classifier", "swin_tiny_patch4_window7_224", swin, size)
    seg_bundle = bundle(work / "segmenter", "unet", {"base": 8, "depth": 3} if a.dry else {"base": 16, "depth": 4},
                        seg_size, "segment")  # fmt: skip
    batch = decoded(uris[:n_par], size, cuda)
    common = {"explain": "all", "method": "fast", "thumbnails": "none"}
    ref = screened(
        [SegmentStage(seg_bundle, "torch", "cpu"), ClassifyStage(cls_bundle, "torch", "cpu", **common)], batch
    )

    def measured(stages: list) -> dict:
        """Parity of `stages` with the reference, end-to-end img/s (decode included) per batch size, and each
        stage's milliseconds per image at the largest batch."""
        run = lambda c: screened(stages, decoded(c, size, cuda))  # noqa: E731
        rates = {b: rate(run, uris, b, reps) for b in batches}
        ms = stage_ms(run(uris[: max(batches)]))
        return {**parity(ref, screened(stages, batch)), "img_per_s_end_to_end": rates, "ms_per_image": ms}

    def variant(prec: str, compiled: bool):
        def run() -> str:
            opts = {"precision": prec, "compile": compiled}
            seg = SegmentStage(seg_bundle, "torch", dev, **opts)
            cls = ClassifyStage(cls_bundle, "torch", dev, **common, **opts)
            row = {"variant": f"{'compile-' if compiled else ''}{prec}", **measured([seg, cls])}
            info["variants"].append(row)
            return (
                f"probs {row['max_abs_prob_diff']:.2e} top1 {row['top1_agreement']:.3f} cam "
                f"{row['cam_max_abs_diff']:.2e} mask {row['mask_agreement']:.4f}, img/s "
                + " ".join(f"b{b}:{v:.0f}" for b, v in row["img_per_s_end_to_end"].items())
            )

        return run

    what = "decode -> SegmentStage -> ClassifyStage (torch backend, fast CAM)"
    for prec in PRECISIONS:
        if cuda or prec != "fp16":  # no fp16 kernels worth checking on a CPU
            step(prec, what, variant(prec, False))

    # 3. Grad-CAM in the explain stage (the classifier defers it), against the CPU's
    def gradcam_step() -> str:
        deferred = {"explain": "all", "method": "gradcam", "thumbnails": "none", "explain_here": False}
        classified = ClassifyStage(cls_bundle, "torch", dev, **deferred)(dict(batch))
        explainer = ExplainStage(cls_bundle, "gradcam", dev)
        cams, cams_ref = explainer(dict(classified)), ExplainStage(cls_bundle, "gradcam", "cpu")(dict(classified))
        t = time.perf_counter()
        for _ in range(reps):
            explainer(dict(classified))
        g = info["gradcam"] = {**parity(cams_ref, cams), "batch": n_par}
        g["img_per_s"] = round(reps * n_par / (time.perf_counter() - t), 1)
        return f"cam {g['cam_max_abs_diff']:.2e}, {g['img_per_s']} img/s"

    step("gradcam", "ExplainStage (pytorch-grad-cam GradCAM)", gradcam_step)

    # 4. the onnxruntime backend on its CUDA provider (the image's `onnxruntime` may be the CPU-only package)
    def onnxruntime_step() -> str:
        import onnxruntime as ort

        from conversion.onnx_export import ensure_onnx

        want = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        if want not in ort.get_available_providers():
            info["onnxruntime"] = {"skipped": f"no {want} (providers: {ort.get_available_providers()})"}
            return info["onnxruntime"]["skipped"]
        ensure_onnx(seg_bundle)
        ensure_onnx(cls_bundle)
        seg, cls = SegmentStage(seg_bundle, "onnxruntime", dev), ClassifyStage(cls_bundle, "onnxruntime", dev, **common)
        o = info["onnxruntime"] = {"providers": cls.predictor.session.get_providers(), **measured([seg, cls])}
        return f"probs {o['max_abs_prob_diff']:.2e} top1 {o['top1_agreement']}"

    step("onnxruntime", "SegmentStage + ClassifyStage, onnxruntime backend", onnxruntime_step)

    # 5. TensorRT: `skinscan convert --to tensorrt --fp16` (its own parity check), then the classify stage on it
    def tensorrt_step() -> str:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            info["tensorrt"] = {"skipped": "TensorRT is not installed on this machine"}
            return info["tensorrt"]["skipped"]
        if not cuda:
            info["tensorrt"] = {"skipped": "no CUDA device"}
            return info["tensorrt"]["skipped"]
        from conversion.convert import run as convert
        from skinscan.config import ConvertConfig

        built = convert(ConvertConfig(model=cls_bundle, to="tensorrt", fp16=True, opt_batch=64, max_batch=256))
        cls = ClassifyStage(cls_bundle, "tensorrt", dev, **common, precision="fp16")
        r = info["tensorrt"] = {
            "convert_parity": built.get("tensorrt_parity"),
            **measured([SegmentStage(seg_bundle, "torch", dev), cls]),
        }
        return f"probs {r['max_abs_prob_diff']:.2e} top1 {r['top1_agreement']}"

    step("tensorrt", "skinscan convert --to tensorrt --fp16, ClassifyStage", tensorrt_step)

    # 6. the training step
    def training_step() -> str:
        t = info["training"] = train_check(torch.device(dev), size, a.dry)
        return f"{t['img_per_s']} img/s, loss {t['mean_loss']}"

    step("training", "skinscan/training/steps.py train_one_epoch", training_step)

    # 7. torch.compile last: the costliest steps, each started only with its budget left
    for prec in [c for c in a.compile.split(",") if c] if cuda else []:
        step(f"compile-{prec}", what, variant(prec, True), needs_s=COMPILE_S)
    info["wall_s"] = round(time.perf_counter() - started, 1)
    write()
    print(json.dumps({k: v for k, v in info.items() if k != "variants"}))
    if a.out:
        print(f"-> {a.out}")
    return info


if __name__ == "__main__":
    main()
