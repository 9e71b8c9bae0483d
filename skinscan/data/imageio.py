"""Image decoding used everywhere: one function, always RGB uint8, one typed error for bad input.

EXIF orientation is applied; greyscale, palette, RGBA (composited on black), CMYK and 16-bit images become
8-bit RGB; images above `max_pixels` are refused before their pixels are decoded (decompression bombs);
empty, truncated or non-image bytes raise `ImageDecodeError` carrying the file's URI and a `kind`.
JPEGs can be decoded at reduced scale (`draft_size`) when only a small version is needed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skinscan.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger than any dermoscope, far below a decompression bomb
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        if im.mode == "RGB":
            return im
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return im.convert("RGB")
    return im.convert("RGB")  # 1, L, YCbCr, LAB, HSV, ...


def decode_image(
    data: bytes,
    uri: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode image bytes to an RGB PIL image, or raise `ImageDecodeError`.

    `draft_size`: for JPEGs, let the decoder downscale by a power of two while keeping both sides
    >= draft_size (much faster for large images that will be resized anyway).
    """
    if not data:
        raise ImageDecodeError(uri, "empty", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageDecodeError(uri, "too_large", f"{w}x{h} exceeds {max_pixels} pixels")
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            if (im.size[0] < im.size[1]) != (w < h):  # rotated by EXIF
                w, h = h, w
            im = _to_rgb(im)
            im.info["original_size"] = (w, h)
            return im
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(uri, "not_image", "unrecognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(uri, "too_large", str(err)) from None
    except OSError as err:
        msg = str(err)
        kind = "truncated" if any(w in msg.lower() for w in ("truncated", "broken", "eof")) else "unsupported"
        raise ImageDecodeError(uri, kind, msg) from None
    except (SyntaxError, ValueError, TypeError, IndexError, EOFError) as err:
        raise ImageDecodeError(uri, "truncated" if isinstance(err, EOFError) else "unsupported", str(err)) from None


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Read and decode one image from any URI (see `skinscan.data.storage`)."""
    from skinscan.data.storage import read_bytes

    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise ImageDecodeError(uri, "missing", "file not found") from None
    return decode_image(data, uri, max_pixels=max_pixels, draft_size=draft_size)


def resize_square(im: Image.Image, size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize to size x size (no crop; dermoscopy lesions are centred) and return HWC uint8."""
    if im.size != (size, size):
        im = im.resize((size, size), resample, reducing_gap=2.0)
    return np.array(im, dtype=np.uint8)  # writable copy (torch.from_numpy needs one)
