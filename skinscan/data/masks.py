"""Lesion masks: where a mask lives beside its image, and reading one at a model's input size.

The convention is HAM10000's, which the synthetic data follows: `<root>/images/<id>.jpg` has its mask at
`<root>/masks/<id>_segmentation.png` (folders, archives and object stores alike).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from skinscan.data import storage
from skinscan.data.imageio import resize_square


def mask_uri_for(image_uri: str) -> str:
    """The mask URI of an image: masks/<image_id>_segmentation.png beside its images/ folder."""
    image_id = storage.stem(image_uri)
    par = storage.parent(storage.parent(image_uri))
    return storage.join(par, f"masks/{image_id}_segmentation.png")


def read_mask(uri: str, size: int) -> np.ndarray:
    """A lesion mask resized to size x size, thresholded at 128 (anti-aliased masks); uint8 0/1."""
    im = Image.open(io.BytesIO(storage.read_bytes(uri))).convert("L")
    return (resize_square(im, size, Image.BILINEAR) >= 128).astype(np.uint8)
