"""What explanations and training read from a timm classifier: its last feature map, its linear head, and
wrappers returning (logits, features) for export or (logits, lesion-mask logits) for the auxiliary mask loss."""

from __future__ import annotations

import torch
from torch import nn

from skinscan.errors import BundleError
from skinscan.models.fusion import MetadataFusion


def image_model(model: nn.Module) -> nn.Module:
    """The timm classifier itself, also inside a metadata-fusion wrapper."""
    return model.model if isinstance(model, MetadataFusion) else model


def is_swin(model: nn.Module) -> bool:
    model = image_model(model)
    return type(model).__name__.startswith("SwinTransformer")


def features_nchw(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map (before pooling) as NCHW, for timm CNNs and (NHWC) Swin alike."""
    f = model.forward_features(x)
    if is_swin(model):
        f = f.permute(0, 3, 1, 2)
    return f


def head_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [K, C], bias [K]) of the linear classifier that follows global average pooling."""
    fc = model.get_classifier()
    if not isinstance(fc, nn.Linear):
        raise BundleError(f"{type(model).__name__}: classifier is not a single Linear layer")
    model = image_model(model)  # CAM explains the image path of a metadata model
    pool = getattr(getattr(model, "head", None), "global_pool", None) or getattr(model, "global_pool", None)
    if pool is not None and getattr(pool, "pool_type", "avg") != "avg":
        raise BundleError(f"{type(model).__name__}: global pool is {pool.pool_type}, not avg")
    return fc.weight.detach(), fc.bias.detach()


class LogitsAndFeatures(nn.Module):
    """Wraps a classifier so one forward pass returns (logits, last feature map NCHW): the export target."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.swin = is_swin(model)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.forward_features(x)
        logits = self.model.forward_head(f) if meta is None else self.model.fused_head(f, meta)
        if self.swin:
            f = f.permute(0, 3, 1, 2)
        return logits, f


class LogitsAndMask(LogitsAndFeatures):
    """Training-time wrapper: (logits, lesion-mask logits) from a 1x1 convolution on the last feature map.

    The mask loss is dense supervision for the feature map that CAM explanations are read from; only
    `model` is shipped (see `shipped_state`).
    """

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.mask_head = nn.Conv2d(model.num_features, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits, f = super().forward(x, meta)
        return logits, self.mask_head(f)


def shipped_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classifier's own weights from a training state dict (drops a `LogitsAndMask` wrapper's head)."""
    if not any(k.startswith("mask_head.") for k in state):
        return state
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
