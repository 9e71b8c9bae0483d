"""Overlays clinicians read: a heatmap over the image, an optional lesion contour, as PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image


def colorize(heat: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> RGB uint8 with the 'jet' colour map (as Grad-CAM papers show it)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean boundary pixels of a boolean mask."""
    m = mask.astype(bool)
    inner = m.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return m & ~inner


def overlay(
    image: np.ndarray,
    heat: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    alpha: float = 0.45,
    contour_color=(0, 255, 0),
) -> np.ndarray:
    """Blend a heatmap (any resolution, upsampled bilinear) over an RGB image and draw the mask outline."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    if heat is not None:
        if heat.shape != (h, w):
            heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize((w, h), Image.BILINEAR))
        out = (1 - alpha) * out + alpha * colorize(heat).astype(np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    if mask is not None:
        if mask.shape != (h, w):
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        out[contour(mask, max(1, min(h, w) // 150))] = contour_color
    return out


def save_png(arr: np.ndarray, path) -> None:
    Image.fromarray(arr).save(path)
