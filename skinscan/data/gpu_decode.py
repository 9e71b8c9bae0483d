"""nvJPEG decoding that gives the CPU path's pixels (`data.imageio.decode_image` in draft mode, then
`resize_square`), for the screening decode stage on a GPU node.

Imports only torch, torchvision, numpy, Pillow and `skinscan.errors`: light enough for any decode worker, and run
as it ships by `skinscan/bench/device_check.py` on a GPU machine."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from skinscan.errors import ImageDecodeError

GPU_DECODE_BYTES = 512 * 2**20
"""Decoded pixels (width x height x 3, from the headers) nvJPEG holds at once: the decode task's GPU memory is
bounded by this, not by the batch length (256 camera images of 24 MP would be 18 GB at once)."""


def draft_scale(width: int, height: int, size: int) -> int:
    """The factor JPEG draft mode reduces by (Pillow's rule): the largest of 8, 4, 2, 1 that keeps both sides at
    least `size`."""
    fits = min(width // size, height // size)
    return next((s for s in (8, 4, 2) if fits >= s), 1)  # an image smaller than `size`: 1, as Pillow


def _oriented(x, orientation: int):
    """An NCHW tensor turned as EXIF orientation 1-8 says (what `ImageOps.exif_transpose` does on the CPU path)."""
    import torch

    turns = {
        2: lambda t: t.flip(-1),
        3: lambda t: t.flip(-1).flip(-2),
        4: lambda t: t.flip(-2),
        5: lambda t: t.transpose(-1, -2),
        6: lambda t: torch.rot90(t, -1, (-2, -1)),
        7: lambda t: t.flip(-1).flip(-2).transpose(-1, -2),
        8: lambda t: torch.rot90(t, 1, (-2, -1)),
    }
    return turns[orientation](x) if orientation in turns else x


def _chunks(idx: list[int], nbytes: list[int], budget: int) -> list[list[int]]:
    """`idx` in order, in runs whose bytes stay within `budget` (an image larger than it goes alone)."""
    chunks: list[list[int]] = [[]]
    held = 0
    for i, b in zip(idx, nbytes):
        if chunks[-1] and held + b > budget:
            chunks.append([])
            held = 0
        chunks[-1].append(i)
        held += b
    return [c for c in chunks if c]


def gpu_decode_jpegs(
    datas: list[bytes],
    size: int,
    headers: list[tuple[int, int, int] | None],
    device: str = "cuda",
    budget: int = GPU_DECODE_BYTES,
) -> list[np.ndarray | None]:
    """nvJPEG through torchvision.io, giving the CPU path's pixels: reduced by the factor JPEG draft mode would use
    (an area average, as the DCT scaling is), turned by the EXIF orientation, resized with antialiased bilinear
    (Pillow's filter). On the ISIC Archive images of the share (~1 MP), with torchvision's CPU decoder: mean 0.24
    grey levels from the CPU path, 99th percentile 1, at 224 px; the earlier full decode + resize gave 0.59 and 5
    (tests/test_imageio.py holds the tolerance; nvJPEG's own IDCT: skinscan/bench/device_check.py). `headers`:
    (width, height, orientation) per input, None for inputs the CPU path takes. Chunks of at most `budget` decoded
    bytes, one device-to-host copy each; a file nvJPEG refuses goes to the CPU path alone (None), the rest of its
    chunk does not."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[np.ndarray | None] = [None] * len(datas)
    idx = [i for i, d in enumerate(datas) if headers[i] is not None and d[:3] == b"\xff\xd8\xff"]
    for chunk in _chunks(idx, [headers[i][0] * headers[i][1] * 3 for i in idx], budget):
        tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in chunk]
        try:
            images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batched call: each alone, the bad one to the CPU path
            images = []
            for t in tensors:
                try:
                    images.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
        kept, work = [], []
        for i, im in zip(chunk, images):
            if im is None:
                continue
            width, height, orientation = headers[i]
            try:  # an image the GPU cannot finish (memory, an odd shape) goes to the CPU path alone
                x = im[None].float()
                s = draft_scale(width, height, size)
                if s > 1:
                    x = torch.nn.functional.avg_pool2d(x, s, ceil_mode=True)
                x = torch.nn.functional.interpolate(
                    _oriented(x, orientation), size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            except RuntimeError:
                continue
            kept.append(i)
            work.append(x[0])
        del images, tensors
        if work:  # one copy to the host for the chunk
            host = torch.stack(work).permute(0, 2, 3, 1).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
            for k, i in enumerate(kept):
                out[i] = host[k]
    return out


def read_header(data: bytes, uri: str, max_pixels: int) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from the image header alone, None when the header does not parse (the
    CPU decoder then gives the precise error); the pixel limit is enforced here, before any decoder runs."""
    try:
        im = Image.open(io.BytesIO(data))
        (w, h), orientation = im.size, int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001
        return None
    if w * h > max_pixels:
        raise ImageDecodeError(uri, "too_large", f"{w}x{h} exceeds {max_pixels} pixels")
    return w, h, orientation
