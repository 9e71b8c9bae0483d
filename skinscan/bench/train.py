"""Training images/s with Ray Train: 1 worker (all threads) vs 2 workers (one thread each), same model and data;
and the input pipeline alone (decode + augmentation, no model) with 0 and with N loader processes, so a user sees
whether the model or the loader bounds a run."""

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
    loader = loader_rates(cfg, samples)
    for k, v in loader.items():
        print(f"loader alone, {k:18s} {v:8.1f} img/s (first epoch: decode + augment; no model)")
    bound = "the loader" if max(loader.values()) < max(values) * 1.2 else "the model"
    print(f"with these settings {bound} bounds training")
    result = {
        "model": model,
        "size": size,
        "train_img_per_s": res,
        "ratio_2_over_1": round(values[1] / values[0], 2),
        "loader_only_img_per_s": loader,
    }
    write_json(result, out)
    return result


def loader_rates(cfg, samples: int, processes: tuple[int, ...] | None = None) -> dict[str, float]:
    """Images/s of the training input pipeline alone (as `make_loaders` builds it for one worker), first epoch:
    every image decoded, resized and augmented; no model."""
    import os
    import time

    from skinscan.training.driver import prepare_data
    from skinscan.training.loop import make_loaders

    df, classes = prepare_data(cfg)
    rows = {s: df.loc[df["split"] == s, ["image_id", "uri", "label"]].to_dict("records") for s in ("train", "val")}
    config = {"classes": classes, "train": rows["train"], "val": rows["val"]}
    processes = processes or (0, max(1, (os.cpu_count() or 2) - 1))
    out = {}
    for n in processes:
        c = cfg.model_copy(update={"loader_workers": n, "max_train_samples_per_epoch": samples, "cache_images": False})
        loader, sampler, _ = make_loaders(c, config, rank=0, world=1)
        sampler.set_epoch(0)
        t, seen = time.perf_counter(), 0
        for x, *_ in loader:
            seen += len(x)
        out[f"{n} loader process(es)"] = round(seen / (time.perf_counter() - t), 1)
    return out
