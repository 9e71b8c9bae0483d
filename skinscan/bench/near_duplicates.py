"""Where to put the perceptual hash's threshold (`phash.MAX_DISTANCE`): distances between different lesions of one
set (false matches), between a lesion's own images, and between each image and a copy of it resized to another
size and aspect, brightened and re-encoded (what republishing does), or also cropped by up to 5% (which the hash is
not meant to catch); then the near-duplicates found across sets at that threshold.

    python -m skinscan.bench.near_duplicates HAM10000_metadata.csv-manifest.csv other=manifest.csv ... -o nd.json
"""

from __future__ import annotations

import argparse
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from skinscan.bench.common import write_json
from skinscan.data import phash as ph
from skinscan.data import storage
from skinscan.data.imageio import decode_image
from skinscan.data.splits import lesion_groups


def republished(im: Image.Image, rng: np.random.Generator, crop: bool = False) -> bytes:
    """The same picture as another source might publish it: resized to another size and aspect, brightened,
    re-encoded; `crop`: first cut by up to 5% on each axis, off centre."""
    w, h = im.size
    if crop:
        dx, dy = int(w * rng.uniform(0, 0.05)), int(h * rng.uniform(0, 0.05))
        im = im.crop((dx, dy, w - int(w * 0.05) + dx, h - int(h * 0.05) + dy))
    im = im.resize((int(rng.integers(120, 300)), int(rng.integers(120, 300))))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(60, 90)))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", help="manifest with lesion ids (HAM10000)")
    p.add_argument("others", nargs="*", metavar="NAME=MANIFEST")
    p.add_argument("-o", "--out", default="near_duplicates.json")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    ref = pd.read_csv(a.reference)

    def hashes(uris, copy=None):
        def one(k_u):  # hashed from bytes, exactly as manifests hash them (`phash.phash_bytes`)
            k, u = k_u
            data = storage.read_bytes(u)
            if copy is not None:
                data = republished(decode_image(data, u), np.random.default_rng(k), crop=copy)
            return ph.phash_bytes(data, u)

        with ThreadPoolExecutor(4) as pool:
            return ph.as_bits(list(pool.map(one, enumerate(uris))))

    h = hashes(ref["uri"])
    groups = lesion_groups(ref).to_numpy()
    pairs, d = ph.pairs_within(h, max_distance=64)
    same = groups[pairs[:, 0]] == groups[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    sample = rng.choice(len(ref), size=min(1000, len(ref)), replace=False)
    to_self = np.bitwise_count(h[sample] ^ hashes(ref["uri"].iloc[sample], copy=False)).sum(1)
    cropped = np.bitwise_count(h[sample] ^ hashes(ref["uri"].iloc[sample], copy=True)).sum(1)
    out = {"reference": a.reference, "n": len(ref), "lesions": int(len(set(groups)))}
    out["by_threshold"] = {
        int(t): {
            "pairs_of_different_lesions": int(((d <= t) & ~same).sum()),
            "pairs_within_a_lesion": int(((d <= t) & same).sum()),
            "republished_copies_found": round(float((to_self <= t).mean()), 4),
            "cropped_copies_found": round(float((cropped <= t).mean()), 4),
        }
        for t in range(0, 65, 8)
    }
    pct = (0, 50, 90, 99, 100)
    out["republished_distance_percentiles"] = {q: float(np.percentile(to_self, q)) for q in pct}
    out["cropped_distance_percentiles"] = {q: float(np.percentile(cropped, q)) for q in pct}
    other = np.full(len(h), ph.BITS + 1)
    if len(pairs):  # each image's nearest image of another lesion, among pairs within 64 bits
        diff = ~same
        np.minimum.at(other, pairs[diff, 0], d[diff])
        np.minimum.at(other, pairs[diff, 1], d[diff])
    out["nearest_other_lesion_min"] = int(other.min())
    for item in a.others:
        name, _, path = item.partition("=")
        other = pd.read_csv(path)
        ho = hashes(other["uri"])
        near = ph.distances(h, ho) <= ph.MAX_DISTANCE
        within, _ = ph.pairs_within(ho)
        full = [ph.phash(decode_image(storage.read_bytes(u), u)) for u in other["uri"]]  # no reduced decode
        moved = np.bitwise_count(ho ^ ph.as_bits(full)).sum(1)
        out[name] = {
            "n": len(other),
            "near_duplicates_of_reference": int(near.sum()),
            "examples": other["image_id"][near].head(5).tolist(),
            "pairs_within": [other["image_id"].iloc[list(p)].tolist() for p in within],
            "manifest_decode_vs_full_decode_bits": {q: float(np.percentile(moved, q)) for q in (50, 90, 100)},
        }
    print(json.dumps(out, indent=1))
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
