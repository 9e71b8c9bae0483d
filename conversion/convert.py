"""`run(cfg)`: export a bundle to ONNX, optionally build a TensorRT engine from it, check parity of each
against PyTorch, and record exports and parity in the bundle's card.

An object-store bundle (`s3://...`) is converted in a local working copy and the new files go back beside it
(`publish_exports`: card last, merged with the remote card as it is then): run on a GPU worker of the type that will
screen (`skinscan submit convert --gpus 1`), it puts the engine for that GPU where the screening actors load it."""

from __future__ import annotations

from pathlib import Path

from conversion.onnx_export import export_onnx
from conversion.parity import check_parity, parity_batch
from skinscan.config import ConvertConfig
from skinscan.data import storage
from skinscan.models.bundle import ExportRecord, file_sha256, local_bundle, publish_exports, read_card, record_export


def profile_batches(cfg: ConvertConfig, task: str) -> tuple[int, int]:
    """(opt, max) batch of the TensorRT profile: from the screening config when given, else from `cfg`."""
    if not cfg.screen_config:
        return cfg.opt_batch, max(cfg.opt_batch, cfg.max_batch)
    from skinscan.config import ScreenConfig, load_config

    screen = load_config(ScreenConfig, cfg.screen_config)
    opt = (screen.segment if task == "segment" else screen.classify).batch_size
    return opt, max(opt, cfg.max_batch)


def engine_target() -> dict:
    """What an engine built here is tied to: the TensorRT version, the GPU and its compute capability."""
    import torch

    from skinscan.runtime.tensorrt import require_tensorrt

    trt = require_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
    }


def run(cfg: ConvertConfig) -> dict:
    if not storage.is_remote(cfg.model):
        return convert(cfg, Path(cfg.model))
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="skinscan-convert-"))
    try:
        shutil.copytree(local_bundle(cfg.model), work, dirs_exist_ok=True)  # the node's cache stays as fetched
        fetched = read_card(work)
        stats = convert(cfg, work)
        publish_exports(work, cfg.model, fetched)
        uri = cfg.model.rstrip("/")
        return {k: (f"{uri}/{Path(v).name}" if k in ("onnx", "tensorrt") else v) for k, v in stats.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert(cfg: ConvertConfig, bundle: Path) -> dict:
    """Convert the local bundle folder `bundle` in place."""
    card = read_card(bundle)
    tol = cfg.max_abs_diff or (5e-2 if cfg.fp16 else 1e-3)
    images = parity_batch(card, cfg.parity_images)
    onnx_file = export_onnx(bundle, with_features=cfg.with_features, opset=cfg.opset, fp16=cfg.fp16)
    stats = {
        "onnx": str(onnx_file),
        "onnx_parity": check_parity(bundle, images, "onnxruntime", cfg.fp16, tol, cfg.min_agreement),
    }
    if cfg.to == "tensorrt":
        from conversion.tensorrt_build import build_engine

        key = "tensorrt_fp16" if cfg.fp16 else "tensorrt"
        opt, top = profile_batches(cfg, card.task)
        engine = build_engine(
            onnx_file, bundle / ("model.fp16.engine" if cfg.fp16 else "model.engine"), opt_batch=opt, max_batch=top
        )
        record_export(
            bundle,
            key,
            ExportRecord(file=engine.name, sha256=file_sha256(engine), source=onnx_file.name, **engine_target()),
        )
        stats["tensorrt"] = str(engine)
        stats["tensorrt_parity"] = check_parity(bundle, images, "tensorrt", cfg.fp16, tol, cfg.min_agreement)
    return stats
