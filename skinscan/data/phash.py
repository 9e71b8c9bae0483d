"""Perceptual hashes: the same picture found again after it was resized (any aspect), re-encoded or brightened, or
flipped or turned, where neither its bytes (sha256) nor its id nor a lesion id match (ISIC 2017 has no lesion ids;
collections republish each other's images at other sizes).

The hash is the sign of the 16 x 16 lowest-frequency DCT coefficients of the 64 x 64 grey image (the DC bit left
0): 256 bits, stored as 64 hex digits in the manifest's `phash` column. The common 8 x 8 version does not work on
dermoscopy: every image is a dark blob in a vignette, so different lesions of HAM10000 share hashes as close as
republished copies do; 256 bits separate them (docs/experiments.md, `python -m skinscan.bench.near_duplicates`).
A crop that shifts the picture by a few percent is not caught. Flipping the image flips the signs of the odd
frequencies and transposing it swaps the two frequency axes, so the hashes of all eight flips and quarter turns
follow from one stored hash by bit operations; two images are near-duplicates when any of them lies within
`MAX_DISTANCE` bits of the other's hash. Matching is brute force in blocks (n_a x n_b x 8 XOR-popcounts, about 10 s
for 8k x 8k here): meant for training and evaluation manifests, not archives of millions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE, KEEP = 64, 16
BITS = KEEP * KEEP
DECODE_SIDE = 4 * SIDE
"""JPEGs are decoded at reduced scale down to no less than this, then box-averaged to SIDE: the hash then hardly
depends on the file's size or format (a reduced decode straight to SIDE moved one file's hash by up to 32 bits)."""
MAX_DISTANCE = 28
"""Bits (of 256) within which two hashes are one picture. On HAM10000 (docs/experiments.md, 2026-12-05) copies resized
to another size and aspect, brightened and re-encoded lie within 19 bits, and no two images of different lesions
lie within 35 of each other (32 million pairs); 28 sits between, nearer the lesions: a false match only joins two
groups in one split, a missed copy leaks."""
_U, _V = np.divmod(np.arange(BITS), KEEP)  # bit i <-> DCT coefficient (row frequency u, column frequency v)
_TRANSPOSE = _V * KEEP + _U  # bit i of the transposed image's hash is bit _TRANSPOSE[i] of the image's


FLAT = 2.0
"""Grey levels of standard deviation below which a picture has no perceptual identity (a blank or one-colour image:
its coefficients' signs are noise), so it gets no hash and matches nothing."""


def phash(rgb: np.ndarray | Image.Image) -> str:
    """The 256-bit perceptual hash of an RGB image (HWC uint8 or PIL), as 64 hex digits; "" for a flat picture."""
    from scipy.fft import dctn

    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, np.uint8))
    grey = np.asarray(im.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), np.float64)
    if grey.std() < FLAT:
        return ""
    bits = dctn(grey, norm="ortho")[:KEEP, :KEEP].ravel() > 0
    bits[0] = False  # the mean brightness: always positive, says nothing
    return np.packbits(bits).tobytes().hex()


def phash_bytes(data: bytes, uri: str = "<bytes>") -> str:
    """The hash of an encoded image, decoded the one way manifests and the threshold's benchmark both use."""
    from skinscan.data.imageio import decode_image

    return phash(decode_image(data, uri, draft_size=DECODE_SIDE))


def as_bits(hashes) -> np.ndarray:
    """Hex hashes -> [n, 4] uint64 words (a missing or malformed hash -> all zero: see `present`)."""
    raw = [bytes.fromhex(h) if isinstance(h, str) and len(h) == BITS // 4 else bytes(BITS // 8) for h in hashes]
    return np.frombuffer(b"".join(raw), ">u8").reshape(-1, BITS // 64).astype(np.uint64)


def present(hashes) -> np.ndarray:
    return np.array([isinstance(h, str) and len(h) == BITS // 4 for h in hashes], bool)


def _unpack(words: np.ndarray) -> np.ndarray:
    return np.unpackbits(words.astype(">u8").view(np.uint8), axis=1)  # [n, 256], bit 0 first


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(">u8").astype(np.uint64)


_ODD_V = _pack((_V % 2 == 1)[None].astype(np.uint8))[0]  # the signs a left-right mirror flips
_ODD_U = _pack((_U % 2 == 1)[None].astype(np.uint8))[0]  # and an up-down mirror


def orientations(h: np.ndarray) -> np.ndarray:
    """[8, n, 4]: the hashes of each image under the eight flips and quarter turns (the image itself first)."""
    flips = [h, h ^ _ODD_V, h ^ _ODD_U, h ^ _ODD_V ^ _ODD_U]
    return np.stack(flips + [_pack(_unpack(f)[:, _TRANSPOSE]) for f in flips])


def _min_distance(chunk: np.ndarray, turned: np.ndarray) -> np.ndarray:
    """[len(chunk), n]: bits between each hash of `chunk` and each image of `turned` in its nearest orientation."""
    d = np.full((len(chunk), turned.shape[1]), BITS + 1, np.uint16)
    for o in turned:
        np.minimum(d, np.bitwise_count(chunk[:, None, :] ^ o[None]).sum(2, dtype=np.uint16), out=d)
    return d


def _block(n: int) -> int:
    """Rows per block: the XOR of one block against n hashes holds block x n x 32 bytes (about 128 MB at most)."""
    return int(np.clip(2**22 // max(n, 1), 8, 256))


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(b)]: for each hash of `b`, its smallest distance in bits to any hash of `a` in any orientation."""
    out = np.full(len(b), BITS + 1, np.int64)
    if len(a) and len(b):
        turned, block = orientations(a), _block(len(a))
        for s in range(0, len(b), block):
            out[s : s + block] = _min_distance(b[s : s + block], turned).min(1)
    return out


def pairs_within(h: np.ndarray, max_distance: int = MAX_DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """([k, 2] index pairs i < j, [k] their distances) of one set's hashes within `max_distance` bits in some
    orientation."""
    turned, block = orientations(h), _block(len(h))
    found, dist = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.uint16)]
    for s in range(0, len(h), block):
        d = _min_distance(h[s : s + block], turned)
        i, j = np.nonzero(d <= max_distance)
        keep = i + s < j
        found.append(np.stack([i[keep] + s, j[keep]], 1))
        dist.append(d[i[keep], j[keep]])
    return np.concatenate(found), np.concatenate(dist)
