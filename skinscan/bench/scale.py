"""Where the driver stands in a screening run: its CPU seconds per 1,000 rows and its share of all CPU used, its
peak memory, over an archive of small synthetic JPEGs screened by a tiny Swin with explain=all (the model is tiny
so that the pipeline's own costs, not the model, dominate; that is where a driver on the row path shows)."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np


def small_archive(path: Path, n: int, size: int = 64) -> Path:
    """`n` synthetic lesion JPEGs (16 distinct renders, re-encoded with noise), stored in a zip."""
    from PIL import Image

    from skinscan.data.synth import render

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    base = [render(c, size, np.random.default_rng(i))[0] for i, c in enumerate(["MEL", "NV", "BCC", "BKL"] * 4)]
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            arr = np.clip(base[i % 16].astype(np.int16) + rng.integers(-4, 5, (size, size, 1)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
            zf.writestr(f"images/IMG_{i:07d}.jpg", buf.getvalue())
    return path


def measure(run, interval: float = 0.2) -> dict:
    """Run `run()`; return the driver process's CPU seconds, the whole machine's CPU seconds (user + system, all
    cores) and the driver's peak RSS over the call."""
    import psutil

    me = psutil.Process()
    peak, stop = [me.memory_info().rss], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(me.memory_info().rss)
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    c0, m0, t0 = me.cpu_times(), psutil.cpu_times(), time.time()
    th.start()
    try:
        result = run()
    finally:
        stop.set()
        th.join()
    c1, m1 = me.cpu_times(), psutil.cpu_times()
    driver = (c1.user - c0.user) + (c1.system - c0.system)
    machine = (m1.user - m0.user) + (m1.system - m0.system)
    return {
        "result": result,
        "driver_cpu_s": driver,
        "all_cpu_s": machine,
        "wall_s": time.time() - t0,
        "peak": max(peak),
    }


def run(workdir: str = "runs/bench", n: int = 20_000, out: str | None = None) -> dict:
    import shutil

    import ray

    from skinscan.bench.common import swin_t_bundle, write_json
    from skinscan.config import ScreenConfig, validate
    from skinscan.screening.pipeline import screen

    work = Path(workdir).resolve()
    tiny = swin_t_bundle(
        work / "tiny_swin_64", 64, kwargs={"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}
    )
    archive = small_archive(work / f"scale_{n}.zip", n)
    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=False)
    output = work / "out_scale"
    shutil.rmtree(output, ignore_errors=True)
    cfg = validate(
        ScreenConfig,
        {
            "model": str(tiny),
            "input": f"zip://images::{archive}",
            "output": str(output),
            "explain": "all",
            "progress": False,
            "decode": {"batch_size": 256, "num_cpus": 0.5},
            "classify": {"batch_size": 256, "threads": 1, "num_cpus": 1},
            "rows_per_part": 2048,
        },
    )
    m = measure(lambda: screen(cfg))
    rows = m["result"]["this_run_rows"]
    res = {
        "inputs": n,
        "rows": rows,
        "wall_s": round(m["wall_s"], 1),
        "driver_cpu_s": round(m["driver_cpu_s"], 2),
        "driver_cpu_s_per_1000_rows": round(1000 * m["driver_cpu_s"] / max(1, rows), 4),
        "all_cpu_s": round(m["all_cpu_s"], 1),
        "driver_share_of_all_cpu": round(m["driver_cpu_s"] / max(1e-9, m["all_cpu_s"]), 4),
        "driver_peak_rss_mb": round(m["peak"] / 2**20),
        "images_per_s": m["result"]["images_per_s"],
    }
    print("| measure | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v} |")
    write_json(res, out)
    return res
