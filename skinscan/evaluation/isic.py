"""ISIC challenge files: predictions (image + category probabilities) and ground truth, and scoring them
with the official `isic-challenge-scoring` package when it is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinscan.data.taxonomy import ISIC2019_OUTPUT_COLUMNS


def write_isic_files(
    image_ids: list[str], y_true: np.ndarray, probs: np.ndarray, classes: list[str], directory: Path
) -> dict[str, Path]:
    """Write three CSVs: the full prediction file (MEL..SCC + UNK, for submission), and the truth/prediction pair
    restricted to the categories with positives in the truth (the official scorer fails on empty categories)."""
    directory.mkdir(parents=True, exist_ok=True)
    full = pd.DataFrame(0.0, index=range(len(image_ids)), columns=list(ISIC2019_OUTPUT_COLUMNS))
    for i, c in enumerate(classes):
        full[c] = probs[:, i]
    full.insert(0, "image", image_ids)
    present = [c for i, c in enumerate(classes) if (y_true == i).any()]
    truth = pd.DataFrame({c: (y_true == classes.index(c)).astype(float) for c in present})
    truth.insert(0, "image", image_ids)
    paths = {
        "predictions": directory / "isic_predictions.csv",
        "truth_scored": directory / "isic_truth.csv",
        "predictions_scored": directory / "isic_predictions_scored.csv",
    }
    full.to_csv(paths["predictions"], index=False, float_format="%.9g")
    truth.to_csv(paths["truth_scored"], index=False)
    full[["image", *present]].to_csv(paths["predictions_scored"], index=False, float_format="%.17g")
    return paths


def official_score(truth_csv: Path, predictions_csv: Path) -> dict | None:
    """Balanced accuracy and per-category AUC from the official scorer, or None when it is not installed."""
    try:
        from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore
    except ImportError:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the scorer calls DataFrame.applymap
        score = ClassificationScore.from_file(
            Path(truth_csv), Path(predictions_csv), ClassificationMetric.BALANCED_ACCURACY
        )
    return {
        "balanced_accuracy": float(score.aggregate["balanced_accuracy"]),
        "auc": {c: float(v) for c, v in score.per_category["auc"].items()},
    }
