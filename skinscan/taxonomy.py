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
