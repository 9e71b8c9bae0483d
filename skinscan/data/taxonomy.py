"""Class names: the ISIC 2019 diagnostic categories and the HAM10000 `dx` codes."""

from __future__ import annotations

ISIC2019_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
"""The eight ISIC 2019 training classes, in the order of the official ground-truth CSV."""

ISIC2019_OUTPUT_COLUMNS: tuple[str, ...] = (*ISIC2019_CLASSES, "UNK")
"""Columns of an ISIC 2019 ground-truth / prediction file (UNK: none of the above)."""

MALIGNANT: frozenset[str] = frozenset({"MEL", "BCC", "SCC", "AK"})
"""Classes treated as malignant or pre-malignant by the default screening flag rule."""

HAM_DX_TO_ISIC: dict[str, str | None] = {
    "mel": "MEL",
    "nv": "NV",
    "bcc": "BCC",
    "bkl": "BKL",
    "df": "DF",
    "vasc": "VASC",
    "akiec": None,  # AK or SCC: decided by the ISIC 2019 ground truth when available
}

ISIC_TO_HAM_DX: dict[str, str] = {"AK": "akiec", "SCC": "akiec"} | {
    isic: dx for dx, isic in HAM_DX_TO_ISIC.items() if isic is not None
}
"""ISIC 2019 class -> HAM10000 `dx` code: the seven HAM10000 classes, with AK and SCC merged into `akiec`."""

CLASS_DESCRIPTIONS: dict[str, str] = {
    "MEL": "melanoma",
    "NV": "melanocytic nevus",
    "BCC": "basal cell carcinoma",
    "AK": "actinic keratosis",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
    "SCC": "squamous cell carcinoma",
}


def ham_dx_to_isic(dx: str, isic_label: str | None = None) -> str:
    """Map a HAM10000 `dx` code to an ISIC 2019 class.

    `akiec` covers both AK and SCC; the ISIC 2019 ground truth (`isic_label`) decides where given,
    otherwise it maps to AK (the majority of `akiec` images in ISIC 2019).
    """
    key = dx.strip().lower()
    if key not in HAM_DX_TO_ISIC:
        from skinscan.errors import DataError

        raise DataError(f"unknown HAM10000 dx code {dx!r}; expected one of {sorted(HAM_DX_TO_ISIC)}")
    mapped = HAM_DX_TO_ISIC[key]
    if mapped is not None:
        return mapped
    if isic_label in ("AK", "SCC"):
        return isic_label
    return "AK"


def merge_to_ham(probs, classes: list[str]):
    """Class probabilities over ISIC 2019 classes -> over HAM10000 `dx` codes (AK + SCC summed into `akiec`).

    Returns (probabilities, dx codes in first-seen order, index of each input class in them), or None when some
    class has no HAM10000 counterpart (UNK, or a class name outside ISIC 2019).
    """
    import numpy as np

    if not all(c in ISIC_TO_HAM_DX for c in classes):
        return None
    dx = list(dict.fromkeys(ISIC_TO_HAM_DX[c] for c in classes))
    index = np.array([dx.index(ISIC_TO_HAM_DX[c]) for c in classes])
    return np.asarray(probs, dtype=np.float64) @ np.eye(len(dx))[index], dx, index
