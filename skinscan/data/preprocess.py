"""The one input path: read -> decode -> resize -> normalise, exactly as every model in SkinScan sees an image.

Training (`ImageDataset`), evaluation, explanation, conversion parity checks, screening and the benchmarks all
go through these functions, with the normalisation recorded in the model bundle's card (`card.normalization`),
so a model is never fed an image prepared differently from the ones it was trained and checked on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from skinscan.data.imageio import read_image, resize_square


class Normalization(BaseModel):
    """Per-channel mean and std applied after scaling pixels to [0, 1]; optionally Shades of Gray colour constancy
    first (`colour_constancy_p`: its Minkowski norm; None = off). Stored in the model card, so every path that
    normalises with the card's settings applies the same constancy."""

    model_config = ConfigDict(frozen=True)

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    colour_constancy_p: float | None = None


def shades_of_gray(img_u8: np.ndarray, p: float = 6.0) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson and Trezzi 2004) on HWC uint8: estimate the illuminant per
    channel as the Minkowski p-norm mean of its pixels, and scale each channel so the illuminant becomes grey
    (p = 1: grey world; p -> inf: max-RGB). Different cameras and lighting then give the same lesion the same
    colours. Computed in float64 and rounded back to uint8, so every caller gets identical bytes."""
    x = np.asarray(img_u8, np.float64)
    illum = np.power(np.mean(np.power(x.reshape(-1, 3), p), axis=0), 1.0 / p)
    gain = np.sqrt(3.0) * illum / max(float(np.linalg.norm(illum)), 1e-9)
    out = x / np.maximum(gain, 1e-9)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PREPROCESSING = (
    "decode (EXIF-oriented RGB) -> resize to input_size x input_size (bilinear) -> Shades of Gray when "
    "normalization.colour_constancy_p is set -> /255 -> normalise"
)


def colour_constant(img_u8: np.ndarray, norm: Normalization | None) -> np.ndarray:
    """The card's colour constancy on one whole decoded image (HWC uint8), or the image unchanged: applied before
    any crop or augmentation, in training as at inference, so both estimate the illuminant from the same pixels."""
    if norm is None or norm.colour_constancy_p is None:
        return img_u8
    return shades_of_gray(img_u8, norm.colour_constancy_p)


def load_image(uri: str, size: int) -> np.ndarray:
    """One image as size x size x 3 uint8 (JPEGs decoded at reduced scale when that is enough)."""
    return resize_square(read_image(uri, draft_size=size), size)


def normalize_batch(batch_u8: np.ndarray, norm: Normalization | None = None) -> np.ndarray:
    """NHWC uint8 -> NCHW float32, normalised (after colour constancy where the card asks): the input every
    backend expects."""
    norm = norm or IMAGENET
    if norm.colour_constancy_p is not None:
        batch_u8 = np.stack([colour_constant(im, norm) for im in batch_u8])
    x = np.asarray(batch_u8, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(norm.mean, np.float32)[None, :, None, None]
    s = np.asarray(norm.std, np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - m) / s)


def load_batch(uris: Sequence[str], size: int, norm: Normalization | None = None) -> np.ndarray:
    """Model input (NCHW float32) for a list of image URIs; a bad image raises `ImageDecodeError`."""
    return normalize_batch(np.stack([load_image(u, size) for u in uris]), norm)
