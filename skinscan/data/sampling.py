"""Oversampling as in the study: random duplication of minority classes up to the largest class.

`DistributedOversampler` draws a fresh oversampled epoch from a seed shared by all workers and gives each
worker a disjoint shard of it, so the class balance holds across a Ray Train job (pass it to the DataLoader
and call `prepare_data_loader(..., add_dist_sampler=False)`, or Ray replaces it with DistributedSampler).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch.utils.data


def oversample_indices(labels: Sequence, seed: int = 0) -> np.ndarray:
    """Indices: every sample once, plus random duplicates of each minority class up to the largest count."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    rng = np.random.default_rng(seed)
    out = [np.arange(len(labels))]
    for cls, n in zip(classes, counts):
        if n < target:
            members = np.flatnonzero(labels == cls)
            out.append(rng.choice(members, size=target - n, replace=True))
    return np.concatenate(out)


def class_histogram(labels: Sequence) -> dict:
    return dict(sorted(Counter(np.asarray(labels).tolist()).items()))


def oversample_frame(df, seed: int = 0, label_col: str = "label"):
    """The training manifest with minority-class rows duplicated; the before/after histogram."""
    idx = oversample_indices(df[label_col].to_numpy(), seed)
    out = df.iloc[idx].reset_index(drop=True)
    return out, {"before": class_histogram(df[label_col]), "after": class_histogram(out[label_col])}


class DistributedOversampler(torch.utils.data.Sampler[int]):
    """Per-epoch oversampled, shuffled indices; worker `rank` of `num_replicas` takes every n-th one."""

    def __init__(
        self,
        labels: Sequence,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        oversample: bool = True,
        max_samples: int | None = None,
    ):
        self.labels = np.asarray(labels)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.oversample, self.max_samples = oversample, max_samples
        self.epoch = 0
        n = len(oversample_indices(self.labels, 0)) if oversample else len(self.labels)
        if max_samples:
            n = min(n, max_samples)
        self.per_replica = -(-n // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """All workers' indices for this epoch (identical on every worker)."""
        seed = self.seed * 100_003 + self.epoch
        idx = oversample_indices(self.labels, seed) if self.oversample else np.arange(len(self.labels))
        idx = np.random.default_rng(seed + 1).permutation(idx)
        if self.max_samples:
            idx = idx[: self.max_samples]
        total = self.per_replica * self.num_replicas
        if len(idx) < total:  # pad so every worker gets the same number of steps
            idx = np.concatenate([idx, idx[: total - len(idx)]])
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_replica
