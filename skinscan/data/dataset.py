"""Torch datasets over manifests: images (and masks) decoded once, resized, cached as uint8 in memory (bounded)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors

from skinscan.data.masks import read_mask
from skinscan.data.preprocess import IMAGENET, Normalization, colour_constant, load_image
from skinscan.data.transforms import to_model_input


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label index); with `mask_uris`, (image, mask tensor [1,H,W] float) or (image, label, mask);
    with `metadata` ([N, METADATA_DIM], `skinscan.data.metadata`), the item's metadata vector last.

    Images are decoded at `load_size` (JPEG draft mode) on first use and cached, so later epochs only
    augment; the cache holds at most `cache_limit_mb` (per process: each DataLoader worker has its own).
    `transform` (torchvision v2) runs on uint8 tensors after the card's colour constancy (on the whole decoded
    image, as at inference) and before normalisation.
    """

    def __init__(
        self,
        uris,
        labels=None,
        load_size: int = 224,
        transform=None,
        mask_uris=None,
        cache: bool = True,
        cache_limit_mb: float | None = None,
        norm: Normalization = IMAGENET,
        metadata: np.ndarray | None = None,
    ):
        self.uris = list(uris)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.mask_uris = None if mask_uris is None else list(mask_uris)
        self.load_size, self.transform, self.cache = load_size, transform, cache
        self.cache_limit = None if cache_limit_mb is None else cache_limit_mb * 2**20
        self.cached_bytes = 0
        self.norm = norm  # the bundle's normalisation (colour constancy included)
        self.metadata = None if metadata is None else torch.from_numpy(np.asarray(metadata, np.float32))
        self._img: dict[int, np.ndarray] = {}
        self._mask: dict[int, np.ndarray] = {}

    @staticmethod
    def item_bytes(load_size: int, masks: bool) -> int:
        """What caching one item costs (image, and mask where there is one)."""
        return load_size**2 * (3 + masks)

    def _keep(self, arr: np.ndarray) -> bool:
        if not self.cache or (self.cache_limit is not None and self.cached_bytes + arr.nbytes > self.cache_limit):
            return False
        self.cached_bytes += arr.nbytes
        return True

    def __len__(self) -> int:
        return len(self.uris)

    def image(self, i: int) -> np.ndarray:
        if i in self._img:
            return self._img[i]
        # colour constancy on the whole decoded image, before any crop or colour augmentation: what inference does
        arr = colour_constant(load_image(self.uris[i], self.load_size), self.norm)
        if self._keep(arr):
            self._img[i] = arr
        return arr

    def mask(self, i: int) -> np.ndarray:
        if i in self._mask:
            return self._mask[i]
        uri = self.mask_uris[i]
        # an image of a source without masks: all "unknown" (255), which the mask loss skips
        arr = read_mask(uri, self.load_size) if uri else np.full((self.load_size, self.load_size), 255, np.uint8)
        if self._keep(arr):
            self._mask[i] = arr
        return arr

    def __getitem__(self, i: int):
        item = self._item(i)
        return item if self.metadata is None else (*item, self.metadata[i])

    def _item(self, i: int):
        img = tv_tensors.Image(torch.from_numpy(self.image(i)).permute(2, 0, 1))
        if self.mask_uris is not None:
            mask = tv_tensors.Mask(torch.from_numpy(self.mask(i))[None])
            if self.transform is not None:
                img, mask = self.transform(img, mask)
            x, m = to_model_input(img.as_subclass(torch.Tensor), self.norm), mask.as_subclass(torch.Tensor).float()
            return (x, m) if self.labels is None else (x, int(self.labels[i]), m)
        if self.transform is not None:
            img = self.transform(img)
        label = -1 if self.labels is None else int(self.labels[i])
        return to_model_input(img.as_subclass(torch.Tensor), self.norm), label
