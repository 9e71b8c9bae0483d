"""ISIC challenge files: predictions (image + category probabilities) and ground truth, and scoring them
with the official `isic-challenge-scoring` package where an interpreter has it (see `SCORER_PYTHON_ENV`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinscan.data.taxonomy import ISIC2019_OUTPUT_COLUMNS
from skinscan.errors import SkinScanError


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


SCORER_PYTHON_ENV = "SKINSCAN_ISIC_SCORER_PYTHON"
"""A Python interpreter with `isic-challenge-scoring` installed, in an environment of its own: the scorer (5.6.0,
the last release for Python 3.11) needs pandas < 3, which SkinScan's environment does not cap. Make one with
`python3 -m venv ~/.cache/isic-scorer && ~/.cache/isic-scorer/bin/pip install isic-challenge-scoring==5.6.0
'pandas<3'` and point this variable at its `bin/python`."""

_SCORE = """
import json, sys, warnings
from pathlib import Path
from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # the scorer calls DataFrame.applymap
    score = ClassificationScore.from_file(Path(sys.argv[1]), Path(sys.argv[2]), ClassificationMetric.BALANCED_ACCURACY)
print(json.dumps({"balanced_accuracy": float(score.aggregate["balanced_accuracy"]),
                  "auc": {c: float(v) for c, v in score.per_category["auc"].items()}}))
"""


def official_score(truth_csv: Path, predictions_csv: Path, python: str | None = None) -> dict | None:
    """Balanced accuracy and per-category AUC from the official scorer, run by `python` (default: the interpreter
    named by SKINSCAN_ISIC_SCORER_PYTHON, else this one), or None when the scorer is not installed there."""
    import json
    import os
    import subprocess
    import sys

    python = python or os.environ.get(SCORER_PYTHON_ENV)
    if not python:
        try:
            import isic_challenge_scoring  # noqa: F401
        except ImportError:
            return None
        python = sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # its own packages only
    try:
        run = subprocess.run(
            [python, "-I", "-c", _SCORE, str(truth_csv), str(predictions_csv)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SkinScanError(f"official ISIC scorer ({python}, {SCORER_PYTHON_ENV}) did not run: {err}") from None
    if run.returncode != 0:
        if "No module named 'isic_challenge_scoring'" in run.stderr:
            return None
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise SkinScanError(f"official ISIC scorer ({python}) failed: {last}")
    return json.loads(run.stdout)
