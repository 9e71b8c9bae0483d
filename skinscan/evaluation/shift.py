"""Is this archive like the validation split the operating point was chosen on? A flag's thresholds hold where the
scores and images look like validation's; in another clinic (other cameras, lighting, case mix) they may not, and
nothing else would say so (the HAM-only reference flagged 93-100% of other clinics' lesions).

Calibration records, per feature, the validation split's deciles (`reference`): the two scores the flag thresholds,
P(MEL) and P(malignant), and four image statistics (mean red, green and blue, and the spread of luminance, of the
decoded image before any crop). At the end of a run a sample of the output's rows is binned by those deciles and
each feature's population stability index (PSI) measured (`compare`): about 0 where the archive matches
validation, above 0.25 a shift the credit-scoring literature calls major. The image statistics decide; the scores'
PSI is reported beside them, after validation is re-mixed to the archive's case mix as EM estimates it
(`evaluation.priors`). Pure numpy and Pillow: the decode stage, calibration and the report call it."""

from __future__ import annotations

import math

import numpy as np

from skinscan.data.taxonomy import MALIGNANT

IMAGE_STATS = ("img_mean_r", "img_mean_g", "img_mean_b", "img_luma_std")
"""Per-image statistics of the classifier's input (0-255), stored in each screening row and in the card's
reference: what a camera, its lighting and its colour processing change first."""
SCORES = ("P(MEL)", "P(malignant)")
MAJOR_PSI = 0.25
"""PSI above which a feature has shifted beyond what the operating point can be trusted with."""
MIN_REFERENCE_ROWS, MIN_ROWS = 30, 100
"""Fewer validation values than the first give no deciles worth recording; fewer archive rows than the second no
comparison worth making (the verdict says so)."""
SAMPLE_ROWS = 20_000
"""Rows a screening run compares (a random sample of its parts): PSI over 10 bins needs no more."""
ADVICE = (
    "the operating point may not hold here; calibrate on this clinic's own labelled images "
    "(skinscan calibrate --model BUNDLE --data CLINIC.csv --split '') before trusting the flag"
)


STATS_GRID = 32
"""Images are box-averaged to 32 x 32 before their statistics are taken, so that the decode stage's work image and
calibration's classifier input (other sizes, other resizing) give the same figures."""


def image_stats(u8: np.ndarray) -> np.ndarray:
    """[n, 4] float32: mean R, G, B and the standard deviation of luminance of NHWC uint8 images (box-averaged
    to `STATS_GRID` first)."""
    from PIL import Image

    x = np.stack(
        [np.asarray(Image.fromarray(np.asarray(im, np.uint8)).resize((STATS_GRID, STATS_GRID), Image.BOX)) for im in u8]
    ).astype(np.float32)
    means = x.mean((1, 2))
    luma = x @ np.float32([0.299, 0.587, 0.114])
    return np.column_stack([means, luma.std((1, 2))]).astype(np.float32)


def flag_scores(probs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """P(MEL) and P(malignant) of `n` rows from per-class probability columns (`prob_<class>`; a class the model
    lacks is absent or NaN and counts 0)."""

    def col(c: str) -> np.ndarray:
        key = f"prob_{c}"
        return np.nan_to_num(np.asarray(probs[key], np.float64), nan=0.0) if key in probs else np.zeros(n)

    return {"P(MEL)": col("MEL"), "P(malignant)": sum(col(c) for c in MALIGNANT)}


def reference(features: dict[str, np.ndarray], labels: np.ndarray | None = None, classes=()) -> dict:
    """Per feature, the deciles of its validation values (the bins' inner edges), the share each bin holds, and
    (given `labels`, indices into `classes`) each class's shares: a comparison can then expect the archive's own
    case mix instead of validation's."""
    out = {}
    for name, v in features.items():
        v = np.asarray(v, np.float64)
        keep = np.isfinite(v)
        if keep.sum() < MIN_REFERENCE_ROWS:
            continue
        edges = np.unique(np.quantile(v[keep], np.linspace(0.1, 0.9, 9)))
        out[name] = {"edges": [float(e) for e in edges], "shares": _shares(edges, v[keep]), "n": int(keep.sum())}
        if labels is not None:
            lab = np.asarray(labels)[keep]
            out[name]["class_shares"] = {
                c: _shares(edges, v[keep][lab == k]) for k, c in enumerate(classes) if (lab == k).sum() >= 5
            }
    return out


def _shares(edges, v: np.ndarray, smooth: float = 0.5) -> list[float]:
    """Share of `v` in each bin, counts smoothed by `smooth` (an empty bin is not infinitely unlikely)."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), v, side="right"), minlength=len(edges) + 1) + smooth
    return [float(c) for c in counts / counts.sum()]


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected)."""
    e, a = np.asarray(expected), np.asarray(actual)
    return float(np.sum((a - e) * np.log(a / e)))


def _expected(r: dict, prior: dict[str, float] | None) -> list[float]:
    """Validation's shares, or, given an archive's class prior, the mix of each class's shares it implies."""
    per = r.get("class_shares") or {}
    if not prior or not per:
        return r["shares"]
    w = {c: prior.get(c, 0.0) for c in per}
    total = sum(w.values())
    if total <= 0:
        return r["shares"]
    return [float(x) for x in sum(np.asarray(per[c]) * w[c] / total for c in per)]


def compare(ref: dict, features: dict[str, np.ndarray], prior: dict[str, float] | None = None) -> dict:
    """PSI of each referenced feature in `features` (a sample of an archive's rows) against validation, less the
    PSI two samples of these sizes show by chance ((bins - 1) (1/n + 1/m)). With the archive's class `prior`
    (estimated without labels), validation is re-mixed to that case mix first, so a programme that sees more
    melanomas than validation did is not told its images differ. `shifted` when any image statistic passes
    `MAJOR_PSI`; the scores' PSI is reported beside (a changed case mix moves them without moving the operating
    point's sensitivity). Features without values (older rows) are left out."""
    per, rows = {}, 0
    for name, r in ref.items():
        v = np.asarray(features.get(name, np.zeros(0)), np.float64)
        v = v[np.isfinite(v)]
        rows = max(rows, len(v))
        if len(v) >= MIN_ROWS:
            chance = (len(r["shares"]) - 1) * (1 / len(v) + 1 / r["n"])
            per[name] = round(max(0.0, psi(_expected(r, prior), _shares(r["edges"], v)) - chance), 4)
    images = {k: v for k, v in per.items() if k in IMAGE_STATS}
    worst = max(images, key=images.get) if images else None
    shifted = bool(worst and images[worst] > MAJOR_PSI)
    return {
        "psi": per,
        "worst": worst,
        "shifted": shifted,
        "threshold": MAJOR_PSI,
        "rows_compared": int(rows),
        "case_mix_adjusted": bool(prior),
        "message": (
            f"distribution shift: {worst} differs from the validation split (PSI {images[worst]:.2f} > {MAJOR_PSI}); "
            + ADVICE
        )
        if shifted
        else None,
    }


def describe(result: dict | None) -> str:
    """One line for the summary and the report."""
    if not result:
        return "not compared with the validation split"
    if result.get("skipped"):
        return f"not compared with the validation split: {result['skipped']}"
    if not result.get("psi"):
        return f"not compared with the validation split: {result.get('rows_compared', 0)} rows (fewer than {MIN_ROWS})"
    if result["shifted"]:
        return result["message"]
    worst = result["worst"]
    if worst is None:
        return "scores compared only (rows without image statistics)"
    return (
        f"images like the validation split's (largest PSI {result['psi'][worst]:.2f}, {worst}; shift above {MAJOR_PSI})"
    )


def sample_parts(parts: list[str], rows_per_part: float, rows: int = SAMPLE_ROWS, seed: int = 0) -> list[str]:
    """A random subset of `parts` holding about `rows` rows."""
    k = max(1, math.ceil(rows / max(1.0, rows_per_part)))
    if k >= len(parts):
        return list(parts)
    pick = np.random.default_rng(seed).choice(len(parts), size=k, replace=False)
    return [parts[i] for i in sorted(pick)]
