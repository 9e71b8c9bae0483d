"""Export model bundles to ONNX (opset >= 17, dynamic batch) and check parity against PyTorch.

Classifiers export two outputs, `logits` and `features` (the last feature map, NCHW), so explanations can
run from the engine's outputs with no backward pass (see `skinscan.explain.cam`). Segmenters export
`mask_logits`. The export and its sha256 are recorded in the bundle's model card (parity: `conversion.parity`).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from skinscan.errors import SkinScanError
from skinscan.models import LogitsAndFeatures
from skinscan.models.bundle import ExportRecord, ModelCard, file_sha256, load_bundle, read_card, record_export

DEFAULT_OPSET = 18


def _export_module(card: ModelCard, model: torch.nn.Module, with_features: bool):
    if card.task == "segment":
        return model, ["mask_logits"]
    if with_features:
        return LogitsAndFeatures(model).eval(), ["logits", "features"]
    return model, ["logits"]  # a metadata model's forward(x, meta) is the fused path


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
    size = card.input_size
    args = [torch.randn(2, 3, size, size)]
    names = ["input"]
    if card.uses_metadata:  # a metadata model reads a second input: the encoded metadata (zeros: unknown)
        from skinscan.data.metadata import METADATA_DIM

        args.append(torch.rand(2, METADATA_DIM))
        names.append("metadata")
    if fp16:
        module, args = module.half(), [a.half() for a in args]
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
                tuple(args),
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=tuple({0: batch} for _ in args),
                verbose=False,
                external_data=False,
            )
        except Exception as err:  # noqa: BLE001 - report any exporter failure as one line
            raise SkinScanError(f"ONNX export of {card.architecture.name} failed: {err}") from None
        program.save(str(out), external_data=False)
    record = ExportRecord(
        file=out.name,
        sha256=file_sha256(out),
        opset=opset,
        outputs=outputs,
        dtype="float16" if fp16 else "float32",
        dynamic_batch=True,
        export_s=round(time.time() - t0, 1),
    )
    record_export(bundle, onnx_key(fp16), record)
    return out


def onnx_key(fp16: bool = False) -> str:
    return "onnx_fp16" if fp16 else "onnx"


def ensure_onnx(bundle: str | Path, fp16: bool = False) -> None:
    """Export the bundle to ONNX unless the card already records an export (jobs call this once, on the driver,
    before actors load the file)."""
    if onnx_key(fp16) not in read_card(bundle).exports:
        export_onnx(bundle, fp16=fp16)
