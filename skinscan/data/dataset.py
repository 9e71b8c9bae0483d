"""Torch datasets over manifests: images (and masks) decoded once, resized, cached as uint8 in memory."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors

from skinscan.data.masks import read_mask
from skinscan.data.preprocess import load_image
from skinscan.data.transforms import to_model_input


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label index); with `mask_uris`, (image, mask tensor [1,H,W] float) or (image, label, mask).

    Images are decoded at `load_size` (JPEG draft mode) on first use and cached, so later epochs only
    augment. `transform` (torchvision v2) runs on uint8 tensors before normalisation.
    """

    def __init__(self, uris, labels=None, load_size: int = 224, transform=None, mask_uris=None, cache: bool = True):
        self.uris = list(uris)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.mask_uris = None if mask_uris is None else list(mask_uris)
        self.load_size, self.transform, self.cache = load_size, transform, cache
        self._img: dict[int, np.ndarray] = {}
        self._mask: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.uris)

    def image(self, i: int) -> np.ndarray:
        if i in self._img:
            return self._img[i]
        arr = load_image(self.uris[i], self.load_size)
        if self.cache:
            self._img[i] = arr
        return arr

    def mask(self, i: int) -> np.ndarray:
        if i in self._mask:
            return self._mask[i]
        arr = read_mask(self.mask_uris[i], self.load_size)
        if self.cache:
            self._mask[i] = arr
        return arr

    def __getitem__(self, i: int):
        img = tv_tensors.Image(torch.from_numpy(self.image(i)).permute(2, 0, 1))
        if self.mask_uris is not None:
            mask = tv_tensors.Mask(torch.from_numpy(self.mask(i))[None])
            if self.transform is not None:
                img, mask = self.transform(img, mask)
            x, m = to_model_input(img.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor).float()
            return (x, m) if self.labels is None else (x, int(self.labels[i]), m)
        if self.transform is not None:
            img = self.transform(img)
        label = -1 if self.labels is None else int(self.labels[i])
        return to_model_input(img.as_subclass(torch.Tensor)), label
