"""One epoch of training and one validation pass, for every task: classification, classification with the
auxiliary lesion-mask loss, and segmentation. Kept apart from the Ray Train loop (`loop.py`), which only sets
up, checkpoints and reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Trainee:
    """A model with everything one optimisation step needs."""

    model: nn.Module  # what is trained (possibly DDP-wrapped, possibly with the training-only mask head)
    unwrapped: nn.Module  # the same without DDP: what the EMA follows and checkpoints store
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: Any  # timm ModelEmaV3 or None
    criterion: nn.Module
    mixer: Any  # (x, y) -> (x, soft targets), or None
    device: torch.device
    memory_format: torch.memory_format
    use_amp: bool
    task: str  # "classify" | "segment"
    lesion_mask_weight: float = 0.0
    metadata_withheld: float | None = None  # a metadata model: each image's metadata is withheld this often

    @property
    def segment(self) -> bool:
        return self.task == "segment"

    @property
    def aux_mask(self) -> bool:
        return not self.segment and self.lesion_mask_weight > 0

    @property
    def metadata(self) -> bool:
        return self.metadata_withheld is not None

    def split_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """(x, y, [mask], metadata or None) from a loader batch: (x, y[, mask][, metadata])."""
        x, y, *rest = batch
        meta = rest.pop() if self.metadata else None
        return x, y, rest, meta

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and the bundle ships: the EMA when there is one."""
        return self.ema.module if self.ema else self.model


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


UNKNOWN_MASK = 255
"""Mask value of an image without a mask (a source that has none): it adds nothing to the mask loss."""


def lesion_mask_loss(mask_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE against the lesion fraction of each feature-map cell (the mask average-pooled to the map's size), over
    the images that have a mask. Images without one weigh 0 instead of being indexed out: no `.any()` and no
    boolean indexing, so no host synchronisation in a GPU step."""
    unknown = (mask == UNKNOWN_MASK).flatten(1).any(1)
    known = (~unknown).to(torch.float32)
    target = nn.functional.adaptive_avg_pool2d(
        mask.masked_fill(unknown[:, None, None, None], 0), mask_logits.shape[-2:]
    )
    per_image = (
        nn.functional.binary_cross_entropy_with_logits(mask_logits.float(), target.float(), reduction="none")
        .flatten(1)
        .mean(1)
    )
    return (per_image * known).sum() / known.sum().clamp(min=1)


def withhold(meta: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The metadata batch with each row zeroed (unknown) with probability p: such rows train the image path."""
    keep = torch.rand(len(meta), generator=generator).to(meta.device) >= p  # meta may be on the GPU already
    return meta * keep.to(meta.dtype)[:, None]


def _forward(t: Trainee, model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None):
    return model(x) if meta is None else model(x, meta)


def _loss(t: Trainee, out, y: torch.Tensor, target: torch.Tensor, mask: list[torch.Tensor]) -> torch.Tensor:
    if t.segment:
        return nn.functional.binary_cross_entropy_with_logits(out, y) + dice_loss(out, y)
    if t.aux_mask:
        logits, mask_logits = out
        return t.criterion(logits.float(), target) + t.lesion_mask_weight * lesion_mask_loss(
            mask_logits.float(), mask[0]
        )
    return t.criterion(out.float(), target)  # class indices or mixed soft targets


def train_one_epoch(t: Trainee, loader) -> tuple[float, int, Counter]:
    """(sum of per-image losses, images seen, class indices drawn) for one pass over this worker's shard. The loss
    and the drawn classes stay on the device until the epoch ends: reading them per step (`float(loss)`,
    `y.tolist()`) would make the CPU wait for the GPU at every step (the lesion-mask loss still checks which
    images have a mask, one small wait a step for that task)."""
    t.model.train()
    drawn: list[torch.Tensor] = []
    loss_sum, n_seen = torch.zeros((), device=t.device), 0
    for batch in loader:
        x, y, mask, meta = t.split_batch(batch)
        if not t.segment:
            drawn.append(y.detach())
        x, target = t.mixer(x, y) if t.mixer else (x, y)
        x = x.contiguous(memory_format=t.memory_format)
        if meta is not None:
            meta = withhold(meta, t.metadata_withheld).to(x.device)
        with torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=t.use_amp):
            loss = _loss(t, _forward(t, t.model, x, meta), y, target, mask)
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        t.sched.step()
        if t.ema:
            t.ema.update(t.unwrapped, step=t.sched.last_epoch)
        loss_sum += loss.detach().float() * len(x)
        n_seen += len(x)
    counts = torch.cat(drawn).bincount().tolist() if drawn else []
    return float(loss_sum), n_seen, Counter({k: n for k, n in enumerate(counts) if n})


def validate(t: Trainee, loader) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(predictions, truths, summed loss) over this worker's validation shard: class indices, or boolean masks."""
    model = t.eval_model.eval()
    preds, truths, vloss = [], [], 0.0
    with torch.no_grad(), torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=t.use_amp):
        for batch in loader:  # a metadata model is validated with the metadata there is
            x, y, _, meta = t.split_batch(batch)
            out = _forward(t, model, x.contiguous(memory_format=t.memory_format), meta)
            out = (out[0] if t.aux_mask else out).float()
            if t.segment:
                vloss += float(nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum")) / out[0].numel()
                preds.append((out > 0).cpu().numpy()[:, 0])
                truths.append(y.cpu().numpy()[:, 0] > 0.5)
            else:
                vloss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
                preds.append(out.argmax(1).cpu().numpy())
                truths.append(y.cpu().numpy())
    return preds, truths, vloss
