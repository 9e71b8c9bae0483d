"""Export model bundles to ONNX (opset >= 17, dynamic batch) and check parity against PyTorch.

Classifiers export two outputs, `logits` and `features` (the last feature map, NCHW), so explanations can
run from the engine's outputs with no backward pass (see `skinscan.explain.cam`). Segmenters export
`mask_logits`. The export, its sha256 and its parity figures are recorded in the bundle's model card.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skinscan.bundle import file_sha256, load_bundle, read_card, update_card
from skinscan.errors import BundleError, SkinScanError
from skinscan.models import LogitsAndFeatures

DEFAULT_OPSET = 18


class ParityError(SkinScanError):
    """A converted model's outputs differ from PyTorch's beyond the configured tolerance."""


def _export_module(card: dict, model: torch.nn.Module, with_features: bool):
    if card["task"] == "segment":
        return model, ["mask_logits"]
    if with_features:
        return LogitsAndFeatures(model).eval(), ["logits", "features"]
    return model, ["logits"]


def export_onnx(
    bundle: str | Path,
    out: str | Path | None = None,
    with_features: bool = True,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
) -> Path:
    """Write `model.onnx` (or `model.fp16.onnx`) into the bundle (or `out`); returns its path.

    `fp16`: the graph itself is float16 (weights and activations), the form TensorRT 11 builds FP16 engines from.
    """
    if opset < 17:
        raise SkinScanError(f"opset {opset} < 17 is not supported")
    bundle = Path(bundle)
    model, card = load_bundle(bundle)
    module, outputs = _export_module(card, model, with_features)
    size = card["input_size"]
    x = torch.randn(2, 3, size, size)
    if fp16:
        module, x = module.half(), x.half()
    out = Path(out) if out else bundle / ("model.fp16.onnx" if fp16 else "model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    t0 = time.time()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=outputs,
                dynamic_shapes=({0: batch},),
                verbose=False,
                external_data=False,
            )
        except Exception as err:  # noqa: BLE001 - report any exporter failure as one line
            raise SkinScanError(f"ONNX export of {card['architecture']['name']} failed: {err}") from None
        program.save(str(out), external_data=False)
    entry = {
        "file": out.name,
        "sha256": file_sha256(out),
        "opset": opset,
        "outputs": outputs,
        "dtype": "float16" if fp16 else "float32",
        "dynamic_batch": True,
        "export_s": round(time.time() - t0, 1),
    }
    exports = card.get("exports", {})
    exports["onnx_fp16" if fp16 else "onnx"] = entry
    update_card(bundle, exports=exports)
    return out


def onnx_path(bundle: str | Path, fp16: bool = False) -> Path:
    """The bundle's ONNX file; its sha256 must match the card."""
    card = read_card(bundle)
    entry = card.get("exports", {}).get("onnx_fp16" if fp16 else "onnx")
    if not entry:
        raise BundleError(f"{bundle}: no ONNX export; run `skinscan convert --model {bundle} --to onnx`")
    path = Path(bundle) / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise BundleError(f"{path}: missing or does not match the sha256 in the model card; export again")
    return path


def compare_outputs(ref: list[np.ndarray], got: list[np.ndarray], task: str) -> dict:
    """max |diff| per output and top-1 agreement (classifiers) or mask agreement (segmenters)."""
    stats = {
        "max_abs_diff": float(max(np.abs(r.astype(np.float64) - g.astype(np.float64)).max() for r, g in zip(ref, got))),
        "n": int(len(ref[0])),
    }
    if task == "segment":
        stats["mask_agreement"] = float(((ref[0] > 0) == (got[0] > 0)).mean())
    else:
        stats["top1_agreement"] = float((ref[0].argmax(1) == got[0].argmax(1)).mean())
    return stats


def check_parity(
    bundle: str | Path,
    images: np.ndarray,
    backend: str = "onnxruntime",
    fp16: bool = False,
    max_abs_diff: float = 1e-3,
    min_agreement: float = 1.0,
    record: bool = True,
) -> dict:
    """Run the same preprocessed batch (NCHW float32) through PyTorch and `backend`; raise ParityError on drift."""
    from skinscan.runtime import create_predictor

    ref = create_predictor(bundle, "torch", with_features=False)
    other = create_predictor(bundle, backend, with_features=False, fp16=fp16)
    r, g = ref.predict(images), other.predict(images)
    card = read_card(bundle)
    stats = compare_outputs([r.outputs[0]], [g.outputs[0]], card["task"])
    stats.update({"backend": backend, "fp16": fp16, "tolerance": max_abs_diff, "min_agreement": min_agreement})
    agreement = stats.get("top1_agreement", stats.get("mask_agreement"))
    stats["passed"] = bool(stats["max_abs_diff"] <= max_abs_diff and agreement >= min_agreement)
    if record:
        parity = card.get("parity", {})
        parity[f"{backend}{'_fp16' if fp16 else ''}"] = stats
        update_card(bundle, parity=parity)
    if not stats["passed"]:
        raise ParityError(
            f"{backend} parity failed: max |diff| {stats['max_abs_diff']:.3g} (tolerance "
            f"{max_abs_diff}), agreement {agreement:.3f} (required {min_agreement})"
        )
    return stats
