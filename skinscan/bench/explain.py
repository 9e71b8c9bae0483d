"""Explanation maps/s on this machine: pytorch-grad-cam, the forward-only fast path (torch and ONNX Runtime),
Swin attention maps; batch of 16 Swin-T images at 224 px."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run(workdir: str = "runs/bench", batch: int = 16, size: int = 224, reps: int = 3, out: str | None = None) -> dict:
    import torch

    from skinscan.bench.common import rate, swin_t_bundle, write_json
    from skinscan.explain.registry import explain
    from skinscan.models import head_weights
    from skinscan.models.bundle import load_bundle
    from skinscan.runtime import create_predictor

    bundle = swin_t_bundle(Path(workdir) / f"swin_t_{size}", size)
    model, _ = load_bundle(bundle)
    w = head_weights(model)[0].numpy()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    ort = create_predictor(bundle, "onnxruntime", with_features=True)

    def grad_cam():
        explain("gradcam", model, x)

    def fast_torch():
        explain("fast", model, x, head_w=w)

    def fast_ort():
        p = ort.predict(x.numpy())
        explain("fast", model, x, p.logits.argmax(1), features=p.features, head_w=w)

    def attention():
        explain("attention", model, x)

    def classify_only():
        ort.predict(x.numpy())

    res = {}
    for name, fn in {
        "pytorch-grad-cam (forward+backward)": grad_cam,
        "fast path, torch forward": fast_torch,
        "fast path, ONNX Runtime forward": fast_ort,
        "Swin attention maps (torch forward)": attention,
        "ONNX Runtime classification alone": classify_only,
    }.items():
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        res[name] = rate(reps * batch, time.perf_counter() - t)
        print(f"{name:40s} {res[name]:8.2f} maps/s", flush=True)
    base = res["pytorch-grad-cam (forward+backward)"]
    print(f"fast path (ORT) / pytorch-grad-cam: {res['fast path, ONNX Runtime forward'] / base:.2f}x")
    result = {"batch": batch, "size": size, "maps_per_s": res}
    write_json(result, out)
    return result
