"""Model factories by name: timm classifiers (Swin default, EfficientNet-B0 baseline, any timm name) and a U-Net.

`create_model(cfg.model, num_classes, task)` builds either; `ModelConfig.kwargs` shrink any model for tests
(e.g. a 40k-parameter Swin: embed_dim=24, depths=[1,1], num_heads=[1,2], window_size=4). Pretrained weights
come from a local file (safetensors or a torch state dict, loaded with weights_only) or, where the network
allows, the timm hub; nothing in the tests or demo depends on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from skinscan.config import ModelConfig
from skinscan.errors import BundleError, ConfigError
from skinscan.models.unet import UNet

SEGMENTER_NAMES = ("unet",)


def _load_local_weights(model: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise BundleError(f"{p}: no tensor matches {type(model).__name__}'s parameters")
    model.load_state_dict(usable, strict=False)  # a different classifier head is expected and re-initialised


def create_classifier(
    name: str, num_classes: int, img_size: int, pretrained: bool | str = False, **kwargs: Any
) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"model.name: unknown timm model {name!r} (see timm.list_models())")
    hub = pretrained is True
    try:
        try:
            model = timm.create_model(name, pretrained=hub, num_classes=num_classes, img_size=img_size, **kwargs)
        except TypeError:  # CNNs take any input size and have no img_size argument
            model = timm.create_model(name, pretrained=hub, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"model.kwargs: {name} rejected {kwargs}: {err}") from None
    if isinstance(pretrained, str) and pretrained:
        _load_local_weights(model, pretrained)
    return model


def create_model(cfg: ModelConfig, num_classes: int = 1) -> nn.Module:
    """The one factory: `unet` builds the segmenter, any other name a timm classifier."""
    if cfg.name in SEGMENTER_NAMES:
        model = UNet(**cfg.kwargs)
        if isinstance(cfg.pretrained, str) and cfg.pretrained:
            _load_local_weights(model, cfg.pretrained)
        return model
    return create_classifier(cfg.name, num_classes, cfg.img_size, cfg.pretrained, **cfg.kwargs)
