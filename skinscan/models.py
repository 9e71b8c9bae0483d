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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEGMENTER_NAMES = ("unet",)


# ---------------------------------------------------------------- U-Net
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain U-Net (Ronneberger et al. 2015) with `depth` down/up levels; one logit channel (lesion)."""

    def __init__(self, in_chans: int = 3, base: int = 16, depth: int = 4, out_chans: int = 1):
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_chans, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth)])
        self.dec = nn.ModuleList([_block(chans[i] * 2, chans[i]) for i in range(depth)])
        self.out = nn.Conv2d(chans[0], out_chans, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.up[i](x)
            x = self.dec[i](torch.cat([x, skips.pop()], dim=1))
        return self.out(x)


# ---------------------------------------------------------------- factory
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


def is_swin(model: nn.Module) -> bool:
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.forward_features(x)
        logits = self.model.forward_head(f)
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, f = super().forward(x)
        return logits, self.mask_head(f)


def shipped_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classifier's own weights from a training state dict (drops a `LogitsAndMask` wrapper's head)."""
    if not any(k.startswith("mask_head.") for k in state):
        return state
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
