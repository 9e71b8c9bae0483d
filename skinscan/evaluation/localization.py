"""Localisation check: how much of an explanation map's energy falls inside the lesion mask.

For each image, share = sum(map inside mask) / sum(map); compared with the share of the image the lesion
covers (what a uniform map would score). A model that looks at the lesion scores share > area.
"""

from __future__ import annotations

import numpy as np


def energy_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[N, H, W] maps (>= 0) and boolean masks of the same size -> [N] share of energy inside the mask."""
    m = masks.astype(bool)
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * m).reshape(len(maps), -1).sum(1)
    return np.divide(inside, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)


def localization_check(
    bundle, uris: list[str], mask_uris: list[str], method: str = "fast", batch_size: int = 32
) -> dict:
    """Mean energy share inside the lesion vs mean lesion area share, over the given images (maps of the
    predicted class)."""
    import torch

    from skinscan.data.masks import read_mask
    from skinscan.data.preprocess import load_batch
    from skinscan.explain.registry import explain, get_method
    from skinscan.models.bundle import load_bundle

    model, card = load_bundle(bundle)
    get_method(method, card.architecture.name)
    size = card.input_size
    shares, areas = [], []
    for i in range(0, len(uris), batch_size):
        x = torch.from_numpy(load_batch(uris[i : i + batch_size], size, card.normalization))
        masks = np.stack([read_mask(u, size) for u in mask_uris[i : i + batch_size]]).astype(bool)
        maps = explain(method, model, x, out_size=(size, size))  # maps of the predicted class
        shares.append(energy_in_mask(maps, masks))
        areas.append(masks.reshape(len(masks), -1).mean(1))
    share, area = np.concatenate(shares), np.concatenate(areas)
    return {
        "method": method,
        "n": int(len(share)),
        "energy_in_lesion": float(share.mean()),
        "lesion_area": float(area.mean()),
        "ratio": float(share.mean() / max(area.mean(), 1e-9)),
        "images_above_area": float((share > area).mean()),
    }
