"""Screening throughput, one run, same machine (Swin-T, 224 px, random init; JPEG inputs ~1 MP):

(a) a naive per-image PyTorch loop with pytorch-grad-cam, (b) a bare ONNX Runtime loop on pre-decoded tensors,
(c) the Ray Data pipeline with explain=none, (d) explain=all with the fast path in the classifier, (e) the same with the
fast path in the explainer pool (the two placements); and peak memory of the pipeline
(all Ray processes + driver) for an archive and for 10x that archive (tiny model, so 10x stays quick).
Pipeline rates are given at steady state (rows after the first 10%, as (b) is timed warm) and end to end
(after listing, to the last row written: Ray actor start-up and model loading included); ratios for both.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_archive(path: Path, n: int, size=(1024, 768), seed: int = 0) -> Path:
    """~1 MP JPEGs of synthetic lesions, in a zip."""
    from skinscan.data.synth import render

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = [render(c, 384, np.random.default_rng(i)) for i, c in enumerate(["MEL", "NV", "BCC", "BKL"] * 4)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            img = Image.fromarray(base[i % len(base)][0]).resize(size, Image.BILINEAR)
            arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (size[1], size[0], 1))
            buf = io.BytesIO()
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            zf.writestr(f"images/IMG_{i:06d}.jpg", buf.getvalue())
    return path


def repeated_archive(path: Path, images: Path, n: int) -> Path:
    """Real JPEGs from `images`, repeated (under distinct names) to `n` members of a zip."""
    files = sorted(images.glob("*.jpg"))
    if not files:
        raise SystemExit(f"skinscan: error: no JPEGs in {images}")
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    datas = [f.read_bytes() for f in files]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"images/{files[i % len(files)].stem}_{i:06d}.jpg", datas[i % len(files)])
    return path


def _pipeline(
    bundle: Path, archive: Path, out: Path, explain: str, classify_batch: int = 16, placement: str = "classifier"
) -> dict:
    import shutil

    from skinscan.config import ScreenConfig, validate
    from skinscan.screening.pipeline import screen

    shutil.rmtree(out, ignore_errors=True)
    cfg = validate(
        ScreenConfig,
        {
            "model": str(bundle),
            "input": f"zip://images::{archive}",
            "output": str(out),
            "explain": explain,
            "explain_placement": placement,
            "explainer": {"batch_size": classify_batch, "threads": 2, "num_cpus": 0.5},  # leaves CPU for decode
            "thumbnails": "none",
            "progress": False,
            "decode": {"batch_size": classify_batch, "num_cpus": 0.5},
            "classify": {"batch_size": classify_batch, "threads": 2, "num_cpus": 1},
        },
    )
    s = screen(cfg)
    return {
        "images": s["this_run_rows"],
        "end_to_end": s["images_per_s"],
        "steady_state": s.get("steady_images_per_s", float("nan")),
        "startup_s": s.get("startup_s"),
        "complete": s["complete"],
    }


def run(
    workdir: str = "runs/bench", n: int = 1500, mem_n: int = 200, out: str | None = None, images: str | None = None
) -> dict:
    """`images`: a folder of real JPEGs, repeated to `n` inputs (instead of ~1 MP synthetic ones)."""
    import onnxruntime  # noqa: F401 - fail early if missing
    import torch

    from skinscan.bench.common import PeakMemory, rate, swin_t_bundle, write_json
    from skinscan.data.imageio import decode_image, resize_square
    from skinscan.data.preprocess import normalize_batch
    from skinscan.explain.cam import gradcam
    from skinscan.models.bundle import load_bundle
    from skinscan.ray_connect import connect
    from skinscan.runtime import create_predictor

    work = Path(workdir).resolve()
    bundle = swin_t_bundle(work / "swin_t_224", 224)
    if images:
        archive = repeated_archive(work / f"bench_real_{Path(images).resolve().parent.name}_{n}.zip", Path(images), n)
    else:
        archive = make_archive(work / f"bench_{n}.zip", n)
    with zipfile.ZipFile(archive) as zf:
        datas = [zf.read(name) for name in sorted(zf.namelist())]
    res: dict = {}

    # (a) naive: one image at a time, eager PyTorch, pytorch-grad-cam, full decode
    torch.set_num_threads(2)
    model, _ = load_bundle(bundle)
    na = min(n, 48)
    t = time.perf_counter()
    for d in datas[:na]:
        x = torch.from_numpy(normalize_batch(resize_square(decode_image(d), 224)[None]))
        with torch.no_grad():
            model(x)
        gradcam(model, x)
    res["a_naive_torch_gradcam"] = rate(na, time.perf_counter() - t)
    print(f"(a) naive per-image torch + pytorch-grad-cam  {res['a_naive_torch_gradcam']:7.2f} img/s", flush=True)

    # (b) bare ONNX Runtime on pre-decoded tensors, batch 16
    pred = create_predictor(bundle, "onnxruntime", with_features=False, threads=2)
    x = normalize_batch(np.stack([resize_square(decode_image(d, draft_size=224), 224) for d in datas]))
    pred.predict(x[:16])
    t = time.perf_counter()
    for i in range(0, len(x), 16):
        pred.predict(x[i : i + 16])
    res["b_bare_onnxruntime"] = rate(len(x), time.perf_counter() - t)
    print(f"(b) bare ONNX Runtime, pre-decoded tensors     {res['b_bare_onnxruntime']:7.2f} img/s", flush=True)
    del model, pred, x

    connect(None, 30)
    res["c_pipeline_explain_none"] = _pipeline(bundle, archive, work / "out_c", "none")
    print(f"(c) pipeline, explain=none                     {res['c_pipeline_explain_none']}", flush=True)
    res["d_pipeline_explain_all_fast"] = _pipeline(bundle, archive, work / "out_d", "all")
    print(f"(d) pipeline, explain=all (fast path)          {res['d_pipeline_explain_all_fast']}", flush=True)
    res["e_pipeline_explain_all_fast_in_pool"] = _pipeline(bundle, archive, work / "out_e", "all", placement="pool")
    print(f"(e) pipeline, explain=all, fast CAM in its pool {res['e_pipeline_explain_all_fast_in_pool']}", flush=True)

    # peak memory: tiny Swin so that 10x the archive stays quick; same settings otherwise
    tiny = swin_t_bundle(
        work / "tiny_swin_64", 64, kwargs={"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}
    )
    mem = {}
    for mult in (1, 10):
        arch = make_archive(work / f"bench_mem_{mem_n * mult}.zip", mem_n * mult, size=(512, 384), seed=mult)
        with PeakMemory() as pm:
            r = _pipeline(tiny, arch, work / f"out_mem_{mult}", "all", classify_batch=32)
        mem[f"{mult}x"] = {"images": mem_n * mult, "peak_rss_mb": round(pm.peak / 2**20), **r}
        print(f"peak memory {mult:2d}x ({mem_n * mult} images): {mem[f'{mult}x']['peak_rss_mb']} MB", flush=True)
    res["memory"] = mem
    a, b = res["a_naive_torch_gradcam"], res["b_bare_onnxruntime"]
    rc, rd = res["c_pipeline_explain_none"], res["d_pipeline_explain_all_fast"]
    ratios = {
        f"{mode}_{name}": round(num / den, 2)
        for mode in ("steady_state", "end_to_end")
        for name, num, den in (
            ("c_over_b", rc[mode], b),
            ("c_over_a", rc[mode], a),
            ("d_over_c", rd[mode], rc[mode]),
        )
    }
    for mode in ("steady_state", "end_to_end"):
        ratios[f"{mode}_e_over_d"] = round(res["e_pipeline_explain_all_fast_in_pool"][mode] / rd[mode], 2)
    ratios["mem_10x_over_1x"] = round(mem["10x"]["peak_rss_mb"] / mem["1x"]["peak_rss_mb"], 2)
    res["ratios"] = ratios
    print("\n| measure | value | target |\n|---|---|---|")
    print(f"| (a) naive torch + pytorch-grad-cam | {a} img/s | |")
    print(f"| (b) bare ONNX Runtime, pre-decoded, warm | {b} img/s | |")
    for r, label in ((rc, "(c) pipeline, explain=none"), (rd, "(d) pipeline, explain=all (fast path)")):
        print(f"| {label}, steady (after the first 10% of rows) | {r['steady_state']} img/s | |")
        print(
            f"| {label}, end to end ({r['images']} images, first rows after {r['startup_s']} s) "
            f"| {r['end_to_end']} img/s | |"
        )
    for name, target in (("c_over_b", ">= 0.8"), ("c_over_a", ">= 3"), ("d_over_c", ">= 0.7")):
        x, y = ratios[f"steady_state_{name}"], ratios[f"end_to_end_{name}"]
        print(f"| {name.replace('_over_', '/')} steady / end to end | {x} / {y} | {target} |")
    x, y = ratios["steady_state_e_over_d"], ratios["end_to_end_e_over_d"]
    print(f"| fast CAM in the explainer pool / in the classifier, steady / end to end | {x} / {y} | |")
    m10, m1 = mem["10x"]["peak_rss_mb"], mem["1x"]["peak_rss_mb"]
    print(f"| peak memory 10x / 1x | {ratios['mem_10x_over_1x']} ({m10} / {m1} MB) | <= 1.3 |")
    write_json(res, out)
    return res
