"""The one registry of explanation methods: every caller (CLI `explain`, the screening stage, the localisation
check, the explanation benchmark) picks a method by the same name and runs it through `explain`.

The names are `config.ExplainMethod` (the screening config's `explain_method`, the CLI's `--method`, and the
`heatmap_method` of each Parquet row). What a method needs decides where it can run:
- features: the last feature map and the linear head's weights; forward-only, so any backend's outputs do
  (ONNX Runtime, TensorRT): the CAM fast path, equal to Grad-CAM for global-average-pool + linear heads.
- gradients: a backward pass through the PyTorch model (pytorch-grad-cam's family).
- attention: the attention probabilities of a timm Swin's last stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from skinscan.config import ExplainMethod
from skinscan.errors import ConfigError
from skinscan.explain.attention import attention_maps
from skinscan.explain.cam import GRADCAM_CLASSES, _scale, cam_from_features, gradcam
from skinscan.models import LogitsAndFeatures, head_weights, is_swin

STORED_GRID = 8  # input-resolution maps are stored at 8 x 8 (feature-resolution maps as they are)


@dataclass(frozen=True)
class Method:
    name: str
    needs: Literal["features", "gradients", "attention"]
    resolution: Literal["features", "input"]  # the grid `explain` returns when no `out_size` is given
    description: str

    @property
    def swin_only(self) -> bool:
        return self.needs == "attention"


METHODS: dict[str, Method] = {
    "fast": Method("fast", "features", "features", "forward-only CAM (= Grad-CAM for avg-pool + linear heads)"),
    **{name: Method(name, "gradients", "input", f"pytorch-grad-cam {cls}") for name, cls in GRADCAM_CLASSES.items()},
    "attention": Method("attention", "attention", "features", "Swin attention received, last stage"),
}
assert set(METHODS) == set(get_args(ExplainMethod)), "config.ExplainMethod and the registry must name the same methods"


def get_method(name: str, model_name: str | None = None) -> Method:
    """The method called `name`; with `model_name`, also checks that the method works for that architecture."""
    method = METHODS.get(name)
    if method is None:
        raise ConfigError(f"explanation method {name!r}: choose from {list(METHODS)}")
    if model_name is not None and method.swin_only and not model_name.startswith("swin"):
        raise ConfigError(f"explanation method {name} needs a Swin classifier, not {model_name}")
    return method


def explain(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    classes: np.ndarray | list[int] | None = None,
    features: np.ndarray | None = None,
    head_w: np.ndarray | None = None,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """[N, H, W] maps in [0, 1] for the given class per image (None: the predicted one), at `out_size` (default:
    the method's own grid). Attention maps do not depend on a class.

    `features` (NCHW) and `head_w` ([K, C]) let the fast path run on what another backend already computed;
    without them the torch model computes the features (and the predicted classes) in one forward pass.
    """
    method = get_method(name)
    if method.needs == "features":
        if features is None:
            with torch.no_grad():
                logits, f = LogitsAndFeatures(model)(x)
            features = f.float().cpu().numpy()
            classes = logits.argmax(1).cpu().numpy() if classes is None else classes
        elif classes is None:
            raise ValueError("explain: give the classes with precomputed features")
        w = head_weights(model)[0].cpu().numpy() if head_w is None else head_w
        return cam_from_features(features, w, np.asarray(classes), out_size)
    if method.needs == "attention":
        if not is_swin(model):
            raise ConfigError(f"explanation method attention needs a Swin classifier, not {type(model).__name__}")
        return attention_maps(model, x, out_size)
    maps = gradcam(model, x, None if classes is None else np.asarray(classes).tolist(), name)
    return maps if out_size is None or maps.shape[1:] == tuple(out_size[::-1]) else _scale(maps, out_size)


def storage_form(name: str, maps: np.ndarray) -> np.ndarray:
    """Maps as stored in a Parquet row: feature-grid maps as they are, input-resolution maps at 8 x 8."""
    if get_method(name).resolution == "features":
        return maps
    return _scale(maps, (STORED_GRID, STORED_GRID))
