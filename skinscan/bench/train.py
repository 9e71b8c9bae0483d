"""Training images/s with Ray Train: 1 worker (all threads) vs 2 workers (one thread each), same model and data."""

from __future__ import annotations

import json
from pathlib import Path


def run(
    workdir: str = "runs/bench", model: str = "resnet18", size: int = 112, samples: int = 1536, out: str | None = None
) -> dict:
    from skinscan.bench.common import write_json
    from skinscan.config import SynthConfig, TrainConfig, validate
    from skinscan.data.synth import generate
    from skinscan.training import run as train

    work = Path(workdir).resolve()
    data = work / "train_bench_synth.zip"
    if not data.exists():
        generate(SynthConfig(output=str(data), n_images=600, size=128, seed=3), progress=False)
    res = {}
    for workers, threads in ((1, 2), (2, 1)):
        cfg = validate(
            TrainConfig,
            {
                "data": {"source": str(data), "hash": False},
                "model": {"name": model, "img_size": size},
                "epochs": 2,
                "batch_size": 32,
                "num_workers": workers,
                "threads_per_worker": threads,
                "max_train_samples_per_epoch": samples,
                "storage_path": str(work / "ray"),
                "output": str(work / f"train_bench_{workers}w"),
                "name": f"bench-{workers}w",
            },
        )
        bundle = train(cfg)
        hist = json.loads((bundle / "history.json").read_text())
        res[f"{workers} worker(s) x {threads} thread(s)"] = round(hist[-1]["train_images_per_s"], 1)
    for k, v in res.items():
        print(f"{k:28s} {v:8.1f} train img/s ({model}, {size} px, epoch 2: images cached)")
    values = list(res.values())
    print(f"2 workers / 1 worker: {values[1] / values[0]:.2f}x")
    result = {"model": model, "size": size, "train_img_per_s": res, "ratio_2_over_1": round(values[1] / values[0], 2)}
    write_json(result, out)
    return result
