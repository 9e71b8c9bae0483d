"""Grad-CAM through pytorch-grad-cam, and the forward-only fast path.

Fast path: for a classifier whose head is global average pooling followed by one linear layer, the Grad-CAM
channel weights on the last feature map F (C x H x W) are dy_k/dF_c = w_kc / (H W), the same for every
position. So Grad-CAM_k = ReLU(sum_c w_kc F_c) / (H W): the class activation map (Zhou et al. 2016) from the
forward pass and the head weights. After min-max normalisation the factor cancels. `cam_from_features` computes
it from features that PyTorch, ONNX Runtime or TensorRT returned, with no backward pass, and post-processes
exactly like pytorch-grad-cam (ReLU, min-max, bilinear resize to the input, min-max).

timm Swin stages are NHWC; the reshape for pytorch-grad-cam permutes to NCHW at any input size (the
library's shipped Swin reshape assumes 7x7 tokens at 224 px).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from skinscan.models import is_swin

GRADCAM_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}
"""pytorch-grad-cam's classes by their SkinScan names (see `skinscan.explain.registry`); imported on first use,
so the forward-only path never loads the library."""


def feature_layer(model: nn.Module) -> nn.Module:
    """The layer whose output is the feature map the classifier head pools."""
    if is_swin(model):
        return model.norm  # NHWC after the last stage
    for name in ("bn2", "conv_head", "layer4", "stages", "features"):
        layer = getattr(model, name, None)
        if layer is not None:
            return layer[-1] if isinstance(layer, nn.Sequential) and name in ("stages", "features") else layer
    raise ValueError(f"no known feature layer for {type(model).__name__}; pass target_layer")


def nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:
    """Reshape transform for pytorch-grad-cam on timm Swin (NHWC at any resolution)."""
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def _scale(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image: per map min-max, optional bilinear resize (cv2), float32."""
    out = []
    for m in maps:
        m = m - np.min(m)
        m = m / (1e-7 + np.max(m))
        if size is not None:
            m = cv2.resize(m.astype(np.float32), size)
        out.append(m)
    return np.float32(out)


def cam_from_features(
    features: np.ndarray, weights: np.ndarray, classes: np.ndarray, out_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Forward-only Grad-CAM: features [N, C, h, w], head weights [K, C], class index per image -> [N, H, W].

    With `out_size=None` the maps stay at feature resolution (the compact storage form), normalised to [0, 1].
    """
    w = weights[np.asarray(classes)]  # N x C
    cam = np.einsum("nc,nchw->nhw", w.astype(np.float32), features.astype(np.float32))
    cam = np.maximum(cam, 0)
    if out_size is None:
        return _scale(cam)
    return _scale(_scale(cam, out_size))


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    classes: list[int] | None = None,
    method: str = "gradcam",
    target_layer: nn.Module | None = None,
) -> np.ndarray:
    """Grad-CAM family maps [N, H, W] in [0, 1] for the predicted (or given) classes, via pytorch-grad-cam.

    The CAM object is a context manager: its hooks are removed when the batch is done.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in GRADCAM_CLASSES:
        raise ValueError(f"unknown CAM method {method!r}; choose from {list(GRADCAM_CLASSES)}")
    cls = getattr(pytorch_grad_cam, GRADCAM_CLASSES[method])
    layer = target_layer or feature_layer(model)
    reshape = nhwc_to_nchw if is_swin(model) else None
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    model.eval()
    with cls(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=targets)
    return maps
