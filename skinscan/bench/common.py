"""Shared helpers: a Swin-T bundle with its ONNX export (random init: compute is what is measured), timing, peak
memory sampling."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


def swin_t_bundle(
    directory: Path,
    size: int = 224,
    classes=("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"),
    name: str = "swin_tiny_patch4_window7_224",
    kwargs: dict | None = None,
) -> Path:
    import torch

    from conversion.onnx_export import ensure_onnx
    from skinscan.config import ModelConfig
    from skinscan.models import create_model
    from skinscan.models.bundle import read_card, save_bundle

    if (directory / "model_card.json").exists() and read_card(directory).input_size == size:
        ensure_onnx(directory)
        return directory
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, img_size=size, kwargs=kwargs or {}), num_classes=len(classes))
    card = {
        "task": "classify",
        "architecture": {"name": name, "kwargs": kwargs or {}},
        "input_size": size,
        "class_names": list(classes),
        "created": "benchmark (random init)",
    }
    save_bundle(directory, model.eval(), card)
    ensure_onnx(directory)  # every benchmark compares against ONNX Runtime
    return directory


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")


class PeakMemory:
    """Samples the summed RSS of this process and every process of the local Ray session (and children)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _rss(self) -> int:
        import psutil

        me = psutil.Process(os.getpid())
        procs = {me.pid: me}
        for p in me.children(recursive=True):
            procs[p.pid] = p
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "plasma" in cmd:
                procs[p.pid] = p
        total = 0
        for p in procs.values():
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - process gone
                pass
        return total

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def labelled_frame(spec: str, classes: list[str]):
    """Manifests `a.csv,b.parquet[:split]` concatenated: their rows of the model's classes, each image once."""
    import pandas as pd

    frames = []
    for part in spec.split(","):
        path, _, split = part.partition(":")
        df = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
        frames.append(df[df["split"] == split] if split else df)
    df = pd.concat(frames, ignore_index=True)
    return df[df["label"].isin(classes)].drop_duplicates("uri").reset_index(drop=True)


def write_json(obj: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))
        print(f"-> {path}")
