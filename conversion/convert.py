"""`run(cfg)`: export a bundle to ONNX, optionally build a TensorRT engine from it, check parity of each
against PyTorch, and record exports and parity in the bundle's card."""

from __future__ import annotations

from pathlib import Path

from conversion.onnx_export import export_onnx
from conversion.parity import check_parity, parity_batch
from skinscan.config import ConvertConfig
from skinscan.models.bundle import ExportRecord, file_sha256, read_card, record_export


def profile_batches(cfg: ConvertConfig, task: str) -> tuple[int, int]:
    """(opt, max) batch of the TensorRT profile: from the screening config when given, else from `cfg`."""
    if not cfg.screen_config:
        return cfg.opt_batch, max(cfg.opt_batch, cfg.max_batch)
    from skinscan.config import ScreenConfig, load_config

    screen = load_config(ScreenConfig, cfg.screen_config)
    opt = (screen.segment if task == "segment" else screen.classify).batch_size
    return opt, max(opt, cfg.max_batch)


def run(cfg: ConvertConfig) -> dict:
    bundle = Path(cfg.model)
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
        record_export(bundle, key, ExportRecord(file=engine.name, sha256=file_sha256(engine), source=onnx_file.name))
        stats["tensorrt"] = str(engine)
        stats["tensorrt_parity"] = check_parity(bundle, images, "tensorrt", cfg.fp16, tol, cfg.min_agreement)
    return stats
