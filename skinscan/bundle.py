"""Model bundles: a directory with weights (safetensors), a model card (JSON) and the weights' sha256.

bundle/
  model.safetensors     weights only: loading never unpickles anything
  model_card.json       architecture, classes, input size, normalisation, preprocessing, training config,
                        data manifest hash, validation metrics, library versions, weights sha256, exports
  train_manifest.parquet  (classifiers) the images the model was trained on: the leakage guard reads it
  config.yaml, history.json, training_curves.png
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skinscan.config import ModelConfig
from skinscan.errors import BundleError

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
CARD_VERSION = 1


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("skinscan", "torch", "torchvision", "timm", "ray", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_bundle(directory: str | Path, model: nn.Module, card: dict[str, Any]) -> Path:
    """Write weights + card atomically enough: the card (with the hash) is written last."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS))
    card = dict(card)
    card.update({"card_version": CARD_VERSION, "weights_file": WEIGHTS, "weights_sha256": file_sha256(d / WEIGHTS)})
    card.setdefault("library_versions", library_versions())
    (d / CARD).write_text(json.dumps(card, indent=2, default=str))
    return d


def read_card(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    if not (d / CARD).is_file():
        raise BundleError(f"{d}: not a model bundle (no {CARD})")
    try:
        return json.loads((d / CARD).read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{d / CARD}: invalid JSON ({err})") from None


def update_card(directory: str | Path, **fields: Any) -> dict[str, Any]:
    card = read_card(directory)
    card.update(fields)
    (Path(directory) / CARD).write_text(json.dumps(card, indent=2, default=str))
    return card


def build_from_card(card: dict[str, Any]) -> nn.Module:
    from skinscan.models import create_model

    arch = card["architecture"]
    cfg = ModelConfig(name=arch["name"], img_size=card["input_size"], kwargs=arch.get("kwargs", {}))
    return create_model(cfg, num_classes=len(card.get("class_names", [])) or 1)


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, card). The weights' sha256 must match the card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    card = read_card(d)
    weights = d / card.get("weights_file", WEIGHTS)
    if not weights.is_file():
        raise BundleError(f"{d}: weights file {weights.name} missing")
    digest = file_sha256(weights)
    if digest != card.get("weights_sha256"):
        raise BundleError(f"{weights}: sha256 {digest[:12]}… does not match the model card; the bundle is corrupt")
    model = build_from_card(card)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError) as err:
        raise BundleError(f"{weights}: weights do not fit the architecture in the card ({err})") from None
    return model.to(device).eval(), card
