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
    """Mean energy share inside the lesion vs mean lesion area share, over the given images."""
    import torch

    from skinscan.bundle import load_bundle
    from skinscan.datasets import read_mask
    from skinscan.explain.attention import attention_maps
    from skinscan.explain.cam import cam_from_features, gradcam
    from skinscan.imageio import read_image, resize_square
    from skinscan.models import LogitsAndFeatures, head_weights
    from skinscan.transforms import normalize_batch

    model, card = load_bundle(bundle)
    size = card["input_size"]
    shares, areas = [], []
    for i in range(0, len(uris), batch_size):
        imgs = np.stack([resize_square(read_image(u, draft_size=size), size) for u in uris[i : i + batch_size]])
        masks = np.stack([read_mask(u, size) for u in mask_uris[i : i + batch_size]]).astype(bool)
        x = torch.from_numpy(normalize_batch(imgs))
        if method == "attention":
            maps = attention_maps(model, x, (size, size))
        elif method == "fast":
            with torch.no_grad():
                logits, f = LogitsAndFeatures(model)(x)
            cls = logits.argmax(1).numpy()
            w, _ = head_weights(model)
            maps = cam_from_features(f.numpy(), w.numpy(), cls, (size, size))
        else:
            maps = gradcam(model, x, None, method)
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
