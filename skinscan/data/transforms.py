"""Training-time augmentation (torchvision v2, image and mask jointly) and the tensor form of normalisation."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from skinscan.config import AugmentConfig
from skinscan.data.preprocess import IMAGENET, Normalization


class RandomChannelGain(v2.Transform):
    """Multiply each colour channel by its own random gain in [1 - g, 1 + g]: another camera's white balance.
    Images only; masks pass unchanged."""

    def __init__(self, g: float):
        super().__init__()
        self.g = g

    def make_params(self, flat_inputs) -> dict:
        return {"gain": 1 + (torch.rand(3) * 2 - 1) * self.g}

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image):
            out = (inpt.float() * params["gain"][:, None, None]).round().clamp(0, 255).to(torch.uint8)
            return tv_tensors.wrap(out, like=inpt)
        return inpt


def train_transform(img_size: int, aug: AugmentConfig) -> v2.Compose:
    """Dermoscopy augmentation on uint8 CHW tensors (image, or image + tv_tensors.Mask jointly)."""
    steps: list = [v2.RandomResizedCrop(img_size, scale=(aug.scale_min, 1.0), ratio=(0.8, 1.25), antialias=True)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip())
    if aug.rotate:
        steps.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
        steps.append(v2.RandomRotation(15))
    if aug.color_jitter > 0 or aug.hue is not None or aug.saturation is not None:
        c = aug.color_jitter
        hue = min(0.5, c / 4) if aug.hue is None else aug.hue
        sat = c if aug.saturation is None else aug.saturation
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=sat, hue=hue))
    if aug.channel_gain > 0:
        steps.append(RandomChannelGain(aug.channel_gain))
    return v2.Compose(steps)


def to_model_input(img_u8_chw: torch.Tensor, norm: Normalization = IMAGENET) -> torch.Tensor:
    """CHW uint8 tensor, already colour-constant (`preprocess.colour_constant`, applied by `ImageDataset` to the
    whole decoded image before augmentation) -> normalised float tensor: the torch twin of the last step of
    `preprocess.normalize_batch`."""
    x = img_u8_chw.float() / 255.0
    return v2.functional.normalize(x, list(norm.mean), list(norm.std))
