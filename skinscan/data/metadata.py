"""Patient metadata (age, sex, anatomical site) as one fixed-length vector per image, for models that fuse it.

Every path that feeds a metadata model (training, `evaluate`, screening) encodes through `encode_frame`, so the
vector means the same everywhere. An unknown field is all zeros, and an image with no known field is the zero
vector: a fused model then returns its image-only prediction (`skinscan.models.fusion`).

Sites differ between sources (HAM10000 `localization`: back, face, acral...; ISIC `anatom_site_general`:
posterior torso, head/neck, palms/soles...); both map onto the ISIC general groups below.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from skinscan.data.manifest import METADATA_COLUMNS

SITES = ("head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital")
SITE_GROUP = {
    # ISIC anatom_site_general
    "head/neck": "head/neck",
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "anterior torso": "torso",
    "posterior torso": "torso",
    "lateral torso": "torso",
    "torso": "torso",
    "palms/soles": "palms/soles",
    "oral/genital": "oral/genital",
    # HAM10000 localization
    "face": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "back": "torso",
    "trunk": "torso",
    "chest": "torso",
    "abdomen": "torso",
    "hand": "upper extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
}
SEXES = ("male", "female")
METADATA_DIM = 2 + len(SEXES) + len(SITES)
"""[age / 100, age known, male, female, one-hot site group]."""


def _text(v: object) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v).strip().lower() or None


def encode_row(age: object, sex: object, site: object) -> np.ndarray:
    out = np.zeros(METADATA_DIM, np.float32)
    try:
        a = float(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        a = math.nan
    if math.isfinite(a) and 0 <= a <= 120:
        out[0], out[1] = a / 100.0, 1.0
    s = _text(sex)
    if s in SEXES:
        out[2 + SEXES.index(s)] = 1.0
    g = SITE_GROUP.get(_text(site) or "")
    if g:
        out[2 + len(SEXES) + SITES.index(g)] = 1.0
    return out


def encode_frame(df: pd.DataFrame) -> np.ndarray:
    """[N, METADATA_DIM] float32 from a frame's `age`, `sex` and `site` columns (any may be absent: all zeros)."""
    cols = [df[c].tolist() if c in df else [None] * len(df) for c in METADATA_COLUMNS]
    if not len(df):
        return np.zeros((0, METADATA_DIM), np.float32)
    return np.stack([encode_row(a, s, t) for a, s, t in zip(*cols)])


def known(meta: np.ndarray) -> np.ndarray:
    """Per row: whether any field is known (else the model's prediction is image-only)."""
    return np.abs(meta).sum(1) > 0
