"""Driver side of training: data preparation, the Ray Train job, and the model bundle it ends in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from skinscan.config import TrainConfig, save_config
from skinscan.data.manifest import METADATA_COLUMNS
from skinscan.data.taxonomy import ISIC2019_OUTPUT_COLUMNS
from skinscan.errors import DataError, SkinScanError

RUN_RECORD = "skinscan_run.json"  # beside Ray's files in the run folder: what a resumed run must match
RESUME_MAY_CHANGE = {"resume", "output", "name", "storage_path", "time_budget_min", "max_failures"}
# Ray Train's controller polls its workers every 2 s by default, and epochs follow that beat: 20 epochs of the tiny
# config took 41 s at 2 s and 16 s at 0.5 s, same results. Epochs of minutes do not notice; the demo, the tests and
# small fine-tunes do. Ray Train passes the variable on to its controller; one set by the user wins.
CONTROLLER_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def run_record(cfg: TrainConfig, df: pd.DataFrame) -> dict:
    """The config and data a run trains on, minus what a resumed run may change."""
    config = json.loads(cfg.model_dump_json(exclude=RESUME_MAY_CHANGE))
    return {"config": config, "data_manifest_sha256": manifest_hash(df)}


def check_resumable(record_uri: str, record: dict, run_name: str) -> None:
    """A resumed run must train the same model on the same data as the run it continues."""
    from skinscan.data import storage

    try:
        saved = json.loads(storage.read_bytes(record_uri))
    except FileNotFoundError:
        raise SkinScanError(
            f"--resume {run_name}: no such run ({record_uri} not found); the run name is the one printed when a "
            "run is interrupted, under the same storage_path"
        ) from None
    changed = [
        f"{k}: {saved['config'].get(k)!r} -> {v!r}" for k, v in record["config"].items() if saved["config"].get(k) != v
    ]
    if saved["data_manifest_sha256"] != record["data_manifest_sha256"]:
        changed.append("the data (manifest hash differs)")
    if changed:
        raise SkinScanError(f"--resume {run_name}: the config differs from that run's: {'; '.join(changed)}")


def manifest_hash(df: pd.DataFrame) -> str:
    cols = [c for c in ("image_id", "sha256", "label", "split") if c in df]
    lines = sorted(df[cols].astype(str).agg(",".join, axis=1))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def prepare_data(cfg: TrainConfig) -> tuple[pd.DataFrame, list[str]]:
    """The manifest with a `split` column (and `mask_uri` where masks are used), and the class names."""
    from skinscan.data import storage
    from skinscan.data.manifest import build_sources, missing_as_none
    from skinscan.data.masks import mask_uri_for
    from skinscan.data.splits import check_lesions_disjoint, split_by_source

    df = build_sources([cfg.data, *cfg.extra_data])
    if cfg.task == "segment" or cfg.lesion_mask_weight:
        df["mask_uri"] = df["uri"].map(mask_uri_for)
        has = df["mask_uri"].map(storage.exists)
        if not has.any():
            raise DataError(f"{cfg.data.source}: no masks found (expected masks/<image_id>_segmentation.png)")
        if cfg.task == "classify":  # the auxiliary loss uses the masks there are; images without one add nothing
            df["mask_uri"] = df["mask_uri"].where(has, None)
            if not has.all():
                print(f"[train] lesion-mask loss on {int(has.sum())} of {len(df)} images (the others have no mask)")
        else:
            df = df[has].reset_index(drop=True)
    if cfg.task == "segment":
        if df["label"].isna().any():  # segmentation needs no labels; split stratifies on a placeholder
            df["label"] = df["label"].fillna("lesion")
        classes: list[str] = []
    else:
        df = df[df["label"].notna()].reset_index(drop=True)
        if df.empty:
            raise DataError(f"{cfg.data.source}: no labelled images to train on")
        present = [c for c in ISIC2019_OUTPUT_COLUMNS if c in set(df["label"])]
        classes = cfg.classes or present
        unknown = sorted(set(df["label"]) - set(classes))
        if unknown:
            df = df[df["label"].isin(classes)].reset_index(drop=True)
            print(f"[train] dropped images of classes not in `classes`: {unknown}")
    brought = "split" in df and df["split"].notna().all()
    if not brought:  # whole lesions and pictures per split within each source, by construction
        df = split_by_source(df, cfg.split.val_fraction, cfg.split.test_fraction, cfg.split.seed)
    # checked where the construction does not cover it: a split the manifest brought, or sources split apart whose
    # copies were not dropped by config entry (one manifest holding several sources); the near-duplicate search is
    # the costly part, so not twice for nothing
    if brought or df["source"].nunique() > len(cfg.extra_data) + 1:
        check_lesions_disjoint(df)
    if not (df["split"] == "val").any() or not (df["split"] == "train").any():
        raise DataError("split produced an empty train or val set; use more images or larger fractions")
    return missing_as_none(df), classes


def _rows(df: pd.DataFrame, split: str) -> list[dict]:
    from skinscan.data.manifest import missing_as_none

    cols = [c for c in ("image_id", "uri", "label", "mask_uri", *METADATA_COLUMNS) if c in df]
    return missing_as_none(df.loc[df["split"] == split, cols].copy()).to_dict("records")


def plot_history(history: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    a.set_xlabel("epoch")
    a.legend()
    for key in ("balanced_accuracy", "accuracy", "macro_f1", "dice", "iou"):
        if key in history[0]:
            b.plot(ep, [h[key] for h in history], "o-", label=key)
    best = max(history, key=lambda h: h["best_epoch"])["best_epoch"]
    b.axvline(best, color="grey", ls="--", lw=1, label=f"best ({metric})")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def epoch_printer(epochs: int):
    """A Ray Train callback (runs on the controller) printing one compact line per epoch."""
    import ray.train

    class EpochPrinter(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]
            keys = [k for k in ("balanced_accuracy", "accuracy", "macro_f1", "dice", "iou") if k in m]
            shown = "  ".join(f"{k} {m[k]:.3f}" for k in keys)
            print(
                f"[train] epoch {m['epoch'] + 1}/{epochs}  train_loss {m['train_loss']:.3f}  val_loss "
                f"{m['val_loss']:.3f}  {shown}  ({m['epoch_time_s']:.0f} s, {m['train_images_per_s']:.0f} img/s)"
                f"  best {m['best_score']:.3f} @ epoch {m['best_epoch'] + 1}",
                flush=True,
            )

    return EpochPrinter()


def run(cfg: TrainConfig, ray_address: str | None = None) -> Path | str:
    """Train on Ray, keep the best validation checkpoint, write the model bundle; returns its path (or URI)."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from skinscan.data import storage
    from skinscan.ray_connect import connect
    from skinscan.training.loop import FAIL_ENV, HIGHER_IS_BETTER, train_loop

    # an object-store output is assembled in a local folder first, then uploaded and read back
    remote = storage.is_remote(cfg.output)
    staging = Path(tempfile.mkdtemp(prefix="skinscan-bundle-")) if remote else Path(cfg.output).resolve()
    df, classes = prepare_data(cfg)
    run_name = cfg.resume or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_uri = storage.normalize(cfg.storage_path)
    record, record_uri = run_record(cfg, df), storage.join(storage.join(storage_uri, run_name), RUN_RECORD)
    if cfg.resume:
        check_resumable(record_uri, record, run_name)
    elif storage.exists(record_uri):
        raise SkinScanError(
            f"a run named {run_name} exists under {storage_uri}: continue it with --resume {run_name}, "
            "or set another name"
        )
    # after the checks that need no Ray, before anything is written: a wrong address leaves no run record behind
    connect(ray_address, cfg.connect_timeout_s, log_to_driver=True)
    if cfg.resume:
        print(f"[train] resuming run {run_name}", flush=True)
    else:
        storage.write_bytes(record_uri, json.dumps(record, indent=2).encode())
    staging.mkdir(parents=True, exist_ok=True)
    save_config(cfg, staging)
    df.to_parquet(staging / "train_manifest.parquet", index=False)
    counts = df.groupby(["split"]).size().to_dict()
    print(f"[train] {cfg.task}: {len(df)} images {counts}; classes {classes or '-'}", flush=True)

    higher = HIGHER_IS_BETTER[cfg.metric]
    # non-secret object-store settings (and the test hook) reach the workers; credentials are the nodes' own
    worker_env = {**storage.storage_env(), **({FAIL_ENV: os.environ[FAIL_ENV]} if FAIL_ENV in os.environ else {})}
    os.environ.setdefault(*CONTROLLER_POLL)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(),
            "classes": classes or ["lesion"],
            "train": _rows(df, "train"),
            "val": _rows(df, "val"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.threads_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=[epoch_printer(cfg.epochs)],
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
            storage_path=storage_uri,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=cfg.metric, checkpoint_score_order="max" if higher else "min"
            ),
        ),
    )
    t0 = time.time()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        first = str(err).strip().splitlines()
        raise SkinScanError(f"training failed: {first[-1] if first else err}") from None
    except SystemExit:  # Ray Train's own Ctrl-C handler aborts the run, then exits from inside fit()
        print(
            f"[train] interrupted, no bundle written; checkpoints: {storage_uri}/{run_name}\n"
            f"[train] continue with the same config and --resume {run_name}",
            file=sys.stderr,
        )
        raise KeyboardInterrupt from None
    wall = time.time() - t0
    best_ckpt = result.get_best_checkpoint(cfg.metric, "max" if higher else "min")
    if best_ckpt is None:
        raise SkinScanError("training produced no checkpoint")
    with best_ckpt.as_directory() as d:
        best_state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    with result.checkpoint.as_directory() as d:
        history = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)["history"]

    out = write_bundle(cfg, staging, classes, df, best_state, history, round(wall, 1), run_name)
    if remote:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"[train] bundle -> {out}  ({wall:.0f} s)", flush=True)
    return out


def calibrate_on_validation(bundle: Path, df: pd.DataFrame, cfg: TrainConfig) -> None:
    """Temperature scaling and operating points on the validation split, into the bundle's card."""
    from skinscan.evaluation.calibrate import calibrate_frame

    val = df[df["split"] == "val"].reset_index(drop=True)
    if val.empty:
        print("[train] no validation split: no calibration or operating points (see skinscan calibrate)")
        return
    calibrate_frame(bundle, val, "torch", cfg.flag, "validation split")


def write_bundle(
    cfg: TrainConfig,
    staging: Path,
    classes: list[str],
    df: pd.DataFrame,
    best_state: dict,
    history: list[dict],
    wall_s: float,
    run_name: str,
) -> Path | str:
    """The model bundle from the best checkpoint's state, written into `staging` (which already holds the config
    and training manifest) and, for an object-store `output`, uploaded there and read back. Makes no network call
    beyond that upload: the model is built from the trained state alone, never from pretrained weights."""
    from skinscan.data import storage
    from skinscan.data.preprocess import PREPROCESSING
    from skinscan.models import create_model, shipped_state
    from skinscan.models.bundle import Architecture, ModelCard, library_versions, publish_bundle, save_bundle
    from skinscan.training.loop import input_normalization

    model = create_model(cfg.model.model_copy(update={"pretrained": False}), num_classes=len(classes) or 1)
    ema_weights = best_state.get("ema")  # the weights validation scored when the run kept an EMA
    model.load_state_dict(shipped_state(ema_weights if ema_weights is not None else best_state["model"]))
    best_metrics = {k: v for k, v in best_state["history"][-1].items() if k != "drawn_per_worker"}
    card = ModelCard(
        task=cfg.task,
        architecture=Architecture(
            name=cfg.model.name, kwargs=cfg.model.kwargs, params=sum(p.numel() for p in model.parameters())
        ),
        class_names=classes,
        inputs=["image", *METADATA_COLUMNS] if cfg.model.metadata else ["image"],
        input_size=cfg.model.img_size,
        normalization=input_normalization(cfg),
        preprocessing=PREPROCESSING,
        training_config=json.loads(cfg.model_dump_json()),
        data_manifest_sha256=manifest_hash(df),
        data_counts={s: int(n) for s, n in df.groupby(["split"]).size().to_dict().items()},
        best_epoch=best_state["epoch"],
        selection_metric=cfg.metric,
        validation_metrics=best_metrics,
        epochs_run=len(history),
        train_wall_s=wall_s,
        ray_run={"name": run_name, "storage_path": cfg.storage_path},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        library_versions=library_versions(),
    )
    save_bundle(staging, model, card)
    (staging / "history.json").write_text(json.dumps(history, indent=2))
    plot_history(history, cfg.metric, staging / "training_curves.png")
    shown = {k: round(v, 4) for k, v in best_metrics.items() if isinstance(v, float)}
    print(f"[train] best epoch {best_state['epoch'] + 1} ({cfg.metric}={best_state['best']['score']:.4f}) {shown}")
    if cfg.task == "classify" and cfg.calibrate:
        calibrate_on_validation(staging, df, cfg)
    if not storage.is_remote(cfg.output):
        return staging
    publish_bundle(staging, cfg.output)
    return cfg.output
