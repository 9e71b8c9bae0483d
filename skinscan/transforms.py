"""Image preprocessing shared by training, evaluation, explanation and screening (pure CPU functions)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from skinscan.config import AugmentConfig
from skinscan.models import IMAGENET_MEAN, IMAGENET_STD

PREPROCESSING = "decode (EXIF-oriented RGB) -> resize to input_size x input_size (bilinear) -> /255 -> normalise"


def normalize_batch(batch_u8: np.ndarray | torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """NHWC uint8 -> NCHW float32, normalised: the input every backend expects."""
    x = np.asarray(batch_u8, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - m) / s)


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
    if aug.color_jitter > 0:
        c = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.5, c / 4)))
    return v2.Compose(steps)


def to_model_input(img_u8_chw: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    x = img_u8_chw.float() / 255.0
    return v2.functional.normalize(x, list(mean), list(std))
