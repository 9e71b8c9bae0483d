"""The per-worker training loop (Ray Train TorchTrainer).

Each worker gets the same training rows and draws its shard of one seeded, oversampled epoch
(`DistributedOversampler`); the loader is prepared with `add_dist_sampler=False` so Ray keeps that sampler.
Validation is sharded too and gathered, so every worker computes the same metrics. Every epoch rank 0
writes a checkpoint (model, optimiser, scheduler, history, best-so-far) and all ranks report; after a
worker failure Ray restarts the group and the loop resumes from the latest checkpoint. The optimisation itself
(one epoch, one validation pass) is in `steps.py`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from skinscan.config import TrainConfig
from skinscan.data.dataset import ImageDataset
from skinscan.data.metadata import encode_frame
from skinscan.data.preprocess import IMAGENET, Normalization
from skinscan.data.sampling import DistributedOversampler
from skinscan.data.transforms import train_transform
from skinscan.evaluation.metrics import classification_summary, dice_iou
from skinscan.models import LogitsAndMask, create_model
from skinscan.training.steps import Trainee, train_one_epoch, validate

FAIL_ENV = "SKINSCAN_FAIL_AFTER_EPOCH"  # test hook: "<epoch>:<marker file>" fails once after that epoch
HIGHER_IS_BETTER = {
    "balanced_accuracy": True,
    "accuracy": True,
    "macro_f1": True,
    "dice": True,
    "iou": True,
    "loss": False,
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def input_normalization(cfg: TrainConfig) -> Normalization:
    return Normalization(mean=IMAGENET.mean, std=IMAGENET.std, colour_constancy_p=cfg.colour_constancy_p)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in the CPU flags. oneDNN also reports bf16 "supported" on plain AVX512 CPUs, where it
    is emulated: a ResNet-18 training step measured 3.6x slower there than in fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 instructions; elsewhere it only adds casts."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_native_bf16() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def make_ema(model: nn.Module, decay: float | None):
    """An exponential moving average of `model`'s weights and buffers, or None.

    The decay warms up (1 - (1 + step)^-3/4, capped at `decay`) so the average is not dominated by the
    random initialisation in short runs; it is what validation scores and what the bundle ships.
    """
    if not decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=0.75)


def make_mixer(cfg: TrainConfig, num_classes: int):
    """`(x, y) -> (x, soft targets)` with timm's Mixup/CutMix (label smoothing folded in), or None when off."""
    if not cfg.augment.mixing:
        return None
    from timm.data import Mixup
    from timm.data.mixup import mixup_target

    a = cfg.augment
    mixup = Mixup(
        mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha,
        prob=a.mix_prob,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2:  # timm mixes pairs: an odd (last) batch is only smoothed
            return x, mixup_target(y, num_classes, 1.0, cfg.label_smoothing)
        return mixup(x, y)

    return mix


def _gather(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _failure_hook(epoch: int) -> None:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if int(at) == epoch and not Path(marker).exists():
        Path(marker).write_text(f"failed after epoch {epoch}\n")
        raise RuntimeError(f"injected failure after epoch {epoch} (test hook {FAIL_ENV})")


def _quiet_ray_train_reports() -> None:
    """Ray Train V2 logs every report (the whole metrics dict) per worker at INFO; the epoch printer says it once."""
    try:
        from ray.train.v2._internal.execution import context  # its logger is named after the file
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _say(message: str) -> None:
    """One line to the driver log. Not `print`: Ray Train patches it to log and echo, so lines showed up twice."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def make_loaders(cfg: TrainConfig, config: dict, rank: int, world: int):
    """(train loader over this worker's oversampled shard, its sampler, validation loader over its shard), as plain
    DataLoaders: decode and augmentation run in `cfg.loader_processes` worker processes, each caching images within
    its share of `cache_max_mb` (no cache when the data set does not fit)."""
    segment = cfg.task == "segment"
    aux_mask = not segment and cfg.lesion_mask_weight > 0
    classes: list[str] = config["classes"]
    load_size = int(round(cfg.model.img_size * 1.15))
    norm = input_normalization(cfg)  # what the bundle's card will record, colour constancy included
    procs = cfg.loader_processes
    per_process_mb = cfg.cache_max_mb / max(1, procs)

    def dataset(rows, transform, size, masks=False, share=1.0):
        """Segmentation: (image, mask); classification: (image, label), or (image, label, mask) with `masks`."""
        labels = None if segment else [classes.index(r["label"]) for r in rows]
        mask_uris = [r["mask_uri"] for r in rows] if segment or masks else None
        budget_mb = per_process_mb * share
        need_mb = len(rows) * ImageDataset.item_bytes(size, mask_uris is not None) / 2**20
        cache = cfg.cache_images and need_mb <= budget_mb
        meta = encode_frame(pd.DataFrame(rows)) if cfg.model.metadata else None
        uris = [r["uri"] for r in rows]
        return ImageDataset(uris, labels, size, transform, mask_uris, cache, budget_mb, norm, meta)

    train_rows, val_rows = config["train"], config["val"]
    train_ds = dataset(train_rows, train_transform(cfg.model.img_size, cfg.augment), load_size, aux_mask, 0.8)
    val_ds = dataset(val_rows, None, cfg.model.img_size, share=0.2)
    if rank == 0 and cfg.cache_images and not train_ds.cache:
        need = len(train_ds) * ImageDataset.item_bytes(load_size, aux_mask or segment) / 2**20
        _say(
            f"[train] image cache off: the training images need {need:.0f} MB, cache_max_mb allows {per_process_mb:.0f}"
        )
    sampler = DistributedOversampler(
        [r.get("label") or "?" for r in train_rows],
        world,
        rank,
        cfg.seed,
        oversample=cfg.oversample and not segment,
        max_samples=cfg.max_train_samples_per_epoch,
    )
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=procs,
        persistent_workers=procs > 0,  # keeps each process's image cache across epochs
        drop_last=len(sampler) > cfg.batch_size,
        pin_memory=torch.cuda.is_available(),  # Ray Train's copy to the GPU is then asynchronous
    )
    val_subset = torch.utils.data.Subset(val_ds, list(range(rank, len(val_ds), world)))
    val_loader = torch.utils.data.DataLoader(
        val_subset,
        batch_size=cfg.batch_size * 2,
        num_workers=min(procs, 2),
        persistent_workers=procs > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler, val_loader


def _loaders(cfg: TrainConfig, config: dict, rank: int, world: int):
    """`make_loaders`, with the loaders moved to the worker's device by Ray Train (our sampler kept)."""
    import ray.train.torch

    loader, sampler, val_loader = make_loaders(cfg, config, rank, world)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    return loader, sampler, ray.train.torch.prepare_data_loader(val_loader, add_dist_sampler=False)


def _trainee(cfg: TrainConfig, num_classes: int, steps_per_epoch: int) -> Trainee:
    import ray.train.torch

    model = create_model(cfg.model, num_classes=num_classes)
    if cfg.task == "classify" and cfg.lesion_mask_weight > 0:
        model = LogitsAndMask(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = ray.train.torch.prepare_model(model.to(memory_format=memory_format))
    unwrapped = model.module if hasattr(model, "module") else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    )
    device = ray.train.torch.get_device()
    mixer = None if cfg.task == "segment" else make_mixer(cfg, num_classes)
    return Trainee(
        model=model,
        unwrapped=unwrapped,
        opt=opt,
        sched=sched,
        ema=make_ema(unwrapped, cfg.ema_decay),
        criterion=nn.CrossEntropyLoss(label_smoothing=0.0 if mixer else cfg.label_smoothing),  # mixer smooths
        mixer=mixer,
        device=device,
        memory_format=memory_format,
        use_amp=cfg.amp and bf16_autocast_supported(device),
        task=cfg.task,
        lesion_mask_weight=cfg.lesion_mask_weight,
        metadata_withheld=cfg.metadata_withheld if cfg.model.metadata else None,
    )


def _restore(t: Trainee) -> tuple[int, list, dict | None]:
    """(first epoch to run, history, best so far) from Ray Train's latest checkpoint, or a fresh start."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return 0, [], None
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    t.unwrapped.load_state_dict(state["model"])
    if t.ema:
        t.ema.module.load_state_dict(state["ema"])
    t.opt.load_state_dict(state["optimizer"])
    t.sched.load_state_dict(state["scheduler"])
    return state["epoch"] + 1, state["history"], state["best"]


def _epoch_metrics(gathered: list, epoch: int, t: Trainee, classes: list[str], t0: float, train_time: float) -> dict:
    """Metrics over all workers' validation shards and training counts (every rank computes the same)."""
    all_p = np.concatenate([p for g in gathered for p in g[0]])
    all_t = np.concatenate([y for g in gathered for y in g[1]])
    n_train = sum(g[3] for g in gathered)
    metrics: dict = {
        "epoch": epoch,
        "val_loss": sum(g[2] for g in gathered) / max(1, len(all_t)),
        "train_loss": sum(g[4] for g in gathered) / max(1, n_train),
        "lr": t.sched.get_last_lr()[0],
        "epoch_time_s": time.time() - t0,
        "train_images_per_s": n_train / max(1e-9, train_time),
    }
    if t.segment:
        metrics["dice"], metrics["iou"] = dice_iou(all_p, all_t)
    else:
        metrics.update(classification_summary(all_t, all_p, len(classes)))
        metrics["drawn_per_worker"] = [{classes[k]: v for k, v in sorted(g[5].items())} for g in gathered]
    metrics["loss"] = metrics["val_loss"]
    return metrics


def _save_and_report(t: Trainee, rank: int, epoch: int, history: list, best: dict, metrics: dict) -> None:
    """Rank 0 writes the checkpoint; every rank reports (Ray Train needs all of them)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(
                {
                    "model": t.unwrapped.state_dict(),
                    "ema": t.ema.module.state_dict() if t.ema else None,
                    "optimizer": t.opt.state_dict(),
                    "scheduler": t.sched.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                },
                Path(tmp) / "state.pt",
            )
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            {k: v for k, v in metrics.items() if k != "drawn_per_worker"}
            | {"drawn_per_worker": str(metrics.get("drawn_per_worker"))},
            checkpoint=checkpoint,
        )


def flag_device(backend: str | None, device: torch.device) -> torch.device:
    """Where a tensor for a collective must live: NCCL reduces CUDA tensors only, gloo CPU tensors."""
    return device if backend == "nccl" else torch.device("cpu")


def _over_budget(cfg: TrainConfig, t_start: float, epochs_done: int, device: torch.device) -> bool:
    """Whether another epoch would exceed `time_budget_min` on any worker (the flag lives on the device the
    process group's backend reduces on: CUDA for NCCL, CPU for gloo)."""
    if not cfg.time_budget_min:
        return False
    elapsed = time.time() - t_start
    per_epoch = elapsed / max(1, epochs_done)
    backend = dist.get_backend() if dist.is_initialized() else None
    stop = torch.tensor([float(elapsed + per_epoch > cfg.time_budget_min * 60)], device=flag_device(backend, device))
    if dist.is_initialized():
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return bool(stop.item())


def train_loop(config: dict) -> None:
    import ray.train

    _quiet_ray_train_reports()
    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads_per_worker)
    seed_everything(cfg.seed * 1000 + rank)
    classes: list[str] = config["classes"]
    loader, sampler, val_loader = _loaders(cfg, config, rank, world)
    t = _trainee(cfg, len(classes), max(1, len(loader)))
    if rank == 0:
        _say(f"[train] {t.device.type}, {'bf16 autocast' if t.use_amp else 'fp32'}, {t.memory_format}")
    start_epoch, history, best = _restore(t)
    if start_epoch and rank == 0:
        _say(f"[train] resumed from checkpoint after epoch {start_epoch}")  # 1-based, as epoch lines

    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        sampler.set_epoch(epoch)
        seed_everything(cfg.seed * 100_003 + epoch * 1009 + rank)  # augmentations: same after a resume
        loss_sum, n_seen, drawn = train_one_epoch(t, loader)
        train_time = time.time() - t0
        preds, truths, vloss = validate(t, val_loader)
        gathered = _gather((preds, truths, vloss, n_seen, loss_sum, dict(drawn)))
        metrics = _epoch_metrics(gathered, epoch, t, classes, t0, train_time)
        score = metrics[cfg.metric]
        higher = HIGHER_IS_BETTER[cfg.metric]
        if best is None or (score > best["score"] if higher else score < best["score"]):
            best = {"epoch": epoch, "score": score, "metric": cfg.metric}
        metrics["best_epoch"], metrics["best_score"] = best["epoch"], best["score"]
        history.append({k: v for k, v in metrics.items() if k != "drawn_per_worker"})
        history[-1]["drawn_per_worker"] = metrics.get("drawn_per_worker")
        _save_and_report(t, rank, epoch, history, best, metrics)
        _failure_hook(epoch)
        if epoch + 1 < cfg.epochs and _over_budget(cfg, t_start, epoch - start_epoch + 1, t.device):
            if rank == 0:
                _say(f"[train] time budget {cfg.time_budget_min} min reached after epoch {epoch}")
            break
