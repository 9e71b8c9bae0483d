"""Compact storage of explanation maps and masks: 8-bit greyscale PNG at feature (or mask) resolution.

A 7x7 Swin-T map is ~100 bytes; a 64x64 mask a few hundred. The Parquet schema stores the bytes with the
method, layer, class and height/width beside them, so a reader can decode and upsample to any image size.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_map(m: np.ndarray) -> bytes:
    """[h, w] float in [0, 1] (or bool mask) -> PNG bytes (uint8)."""
    arr = np.asarray(m)
    u8 = (arr.astype(np.uint8) * 255) if arr.dtype == bool else np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, "L").save(buf, "PNG", optimize=False)
    return buf.getvalue()


def decode_map(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> float32 [h, w] in [0, 1], optionally resized (bilinear) to size=(width, height)."""
    im = Image.open(io.BytesIO(data)).convert("L")
    if size is not None and im.size != tuple(size):
        im = im.resize(tuple(size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0
