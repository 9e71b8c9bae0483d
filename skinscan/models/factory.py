"""Model factories by name: timm classifiers (Swin default, EfficientNet-B0 baseline, any timm name) and a U-Net.

`create_model(cfg.model, num_classes, task)` builds either (`metadata: true`: the classifier wrapped in
`MetadataFusion`); `ModelConfig.kwargs` shrink any model for tests
(e.g. a 40k-parameter Swin: embed_dim=24, depths=[1,1], num_heads=[1,2], window_size=4). Pretrained weights
come from a local file or an object-store URI (safetensors or a torch state dict, loaded with weights_only;
fetched once per node) or, where the network allows, the timm hub; nothing in the tests or demo depends on them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from skinscan.config import ModelConfig
from skinscan.errors import BundleError, ConfigError
from skinscan.models.fusion import MetadataFusion
from skinscan.models.unet import UNet

SEGMENTER_NAMES = ("unet",)


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head, which pretrained weights need not (and usually do not) match."""
    get = getattr(model, "get_classifier", None)
    head = get() if get else None
    if head is None:
        return set()
    ids = {id(t) for t in [*head.parameters(), *head.buffers()]}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def load_pretrained(model: nn.Module, uri: str) -> int:
    """Load pretrained weights (safetensors, or a torch state dict read with weights_only) from a local path or an
    object-store URI (fetched once per node). Every backbone tensor must match in name and shape; the classifier
    head is re-initialised when it differs. Returns how many tensors were loaded."""
    from skinscan.data import storage

    try:
        p = storage.fetch_once(uri, "weights")
    except FileNotFoundError:
        raise ConfigError(f"model.pretrained: weights not found: {uri}") from None
    if not p.is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise BundleError(f"{uri}: not a weights file ({type(err).__name__}: {str(err)[:200]})") from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    backbone = [k for k in own if k not in _head_keys(model)]
    missing = [k for k in backbone if k not in usable]
    name = type(model).__name__
    if missing:
        raise BundleError(
            f"{uri}: only {len(backbone) - len(missing)} of {len(backbone)} backbone tensors of {name} match "
            f"(first missing or of another shape: {missing[0]}); weights of another architecture or size?"
        )
    model.load_state_dict(usable, strict=False)
    print(f"[model] pretrained weights {uri}: {len(usable)} tensors loaded (all {len(backbone)} backbone tensors)")
    return len(usable)


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
        load_pretrained(model, pretrained)
    return model


def create_model(cfg: ModelConfig, num_classes: int = 1) -> nn.Module:
    """The one factory: `unet` builds the segmenter, any other name a timm classifier."""
    if cfg.name in SEGMENTER_NAMES:
        model = UNet(**cfg.kwargs)
        if isinstance(cfg.pretrained, str) and cfg.pretrained:
            load_pretrained(model, cfg.pretrained)
        return model
    model = create_classifier(cfg.name, num_classes, cfg.img_size, cfg.pretrained, **cfg.kwargs)
    return MetadataFusion(model) if cfg.metadata else model
