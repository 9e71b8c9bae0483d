"""`run(cfg)`: export a bundle to ONNX, optionally build a TensorRT engine from it, check parity of each
against PyTorch, and record exports and parity in the bundle's card."""

from __future__ import annotations

from pathlib import Path

from conversion.onnx_export import export_onnx
from conversion.parity import check_parity, parity_batch
from skinscan.config import ConvertConfig
from skinscan.models.bundle import ExportRecord, file_sha256, read_card, record_export


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
        engine = build_engine(onnx_file, bundle / ("model.fp16.engine" if cfg.fp16 else "model.engine"))
        record_export(bundle, key, ExportRecord(file=engine.name, sha256=file_sha256(engine), source=onnx_file.name))
        stats["tensorrt"] = str(engine)
        stats["tensorrt_parity"] = check_parity(bundle, images, "tensorrt", cfg.fp16, tol, cfg.min_agreement)
    return stats
