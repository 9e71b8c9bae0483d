"""img/s per runtime backend and batch size on this machine, with ONNX Runtime / torch eager in the same run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run(
    workdir: str = "runs/bench",
    batches=(1, 4, 16, 32),
    seconds: float = 6.0,
    threads: int | None = None,
    size: int = 224,
    out: str | None = None,
) -> dict:
    import torch

    from skinscan.bench.common import rate, swin_t_bundle, write_json
    from skinscan.runtime import create_predictor

    threads = threads or torch.get_num_threads()
    bundle = swin_t_bundle(Path(workdir) / f"swin_t_{size}", size)
    backends = {
        "torch-eager": create_predictor(bundle, "torch", with_features=False, threads=threads),
        "onnxruntime": create_predictor(bundle, "onnxruntime", with_features=False, threads=threads),
        "onnxruntime+features": create_predictor(bundle, "onnxruntime", with_features=True, threads=threads),
    }
    table: dict[str, dict[int, float]] = {k: {} for k in backends}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
        for name, pred in backends.items():
            pred.predict(x)  # warm-up
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds or n == 0:
                pred.predict(x)
                n += b
            table[name][b] = rate(n, time.perf_counter() - t0)
    ratio = {b: round(table["onnxruntime"][b] / table["torch-eager"][b], 2) for b in batches}
    print(f"Swin-T {size} px, {threads} threads, img/s")
    print(f"{'backend':22s}" + "".join(f"{'b' + str(b):>9s}" for b in batches))
    for name, row in table.items():
        print(f"{name:22s}" + "".join(f"{row[b]:9.2f}" for b in batches))
    print(f"{'ORT / torch eager':22s}" + "".join(f"{ratio[b]:9.2f}" for b in batches))
    result = {
        "model": "swin_tiny_patch4_window7_224",
        "size": size,
        "threads": threads,
        "img_per_s": table,
        "ort_over_torch": ratio,
    }
    write_json(result, out)
    return result
