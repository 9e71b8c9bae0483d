"""The end of every screening run: does the archive look like the validation split its operating point was chosen
on? A random sample of the output's parts (about `shift.SAMPLE_ROWS` rows) against the card's reference
(`evaluation.shift`); the verdict goes into the summary, the output's summary.json and the report."""

from __future__ import annotations

import numpy as np

from skinscan.evaluation import shift
from skinscan.screening.schema import PROB_COLUMNS
from skinscan.screening.writer import list_parts, read_results


def archive_shift(output: str, card, rows_per_part: int) -> dict | None:
    """`shift.compare` of a sample of `output`'s ok rows (the whole output, earlier runs' rows included) with
    `card`'s validation reference, validation re-mixed to the case mix EM estimates for the sample; None when
    nothing is written, a reason when the card has no reference (calibrated before it existed)."""
    parts = list_parts(output)
    if not parts:
        return None
    ref = card.calibration.shift_reference if card.calibration else None
    if not ref:
        return {"skipped": "the model card has no validation reference (calibrate it again: skinscan calibrate)"}
    sample = shift.sample_parts(parts, rows_per_part)
    t = read_results(output, ["status", *PROB_COLUMNS, *shift.IMAGE_STATS], parts=sample)
    ok = np.asarray(t.column("status").to_pylist()) == "ok"
    cols = {c: t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[ok] for c in t.column_names[1:]}
    features = shift.flag_scores({c: cols[c] for c in PROB_COLUMNS}, int(ok.sum()))
    features.update({c: cols[c] for c in shift.IMAGE_STATS})
    expected = expected_prevalence(card, cols) if ok.any() else None
    prior = expected.pop("prior") if expected else None
    out = {**shift.compare(ref, features, prior), "parts_sampled": len(sample), "parts": len(parts)}
    if expected:  # EM assumes the images are like validation's: withheld where they are not
        out["expected_per_1000"] = expected if not out["shifted"] else {"withheld": "the images differ from validation"}
    return out


def expected_prevalence(card, cols: dict[str, np.ndarray]) -> dict | None:
    """Melanoma and any malignant lesion per 1,000 in the sample, estimated without labels (EM on the card's
    posteriors), beside the validation split's, and the estimated prior by class ("prior"). Only for cards whose
    probabilities carry validation's prior (class offsets): with the temperature alone they carry the training
    sampler's, and EM would start from the wrong one."""
    from skinscan.data.taxonomy import MALIGNANT
    from skinscan.evaluation.priors import em_priors

    if not card.calibration.val_prior or card.class_bias is None:
        return None
    classes = card.class_names
    probs = np.nan_to_num(np.column_stack([cols[f"prob_{c}"] for c in classes]), nan=0.0)
    val = np.array([card.calibration.val_prior.get(c, 0.0) for c in classes])
    est = em_priors(probs / np.maximum(probs.sum(1, keepdims=True), 1e-12), val)

    def per_1000(prior, members) -> float:
        return round(1000 * float(sum(prior[classes.index(c)] for c in members if c in classes)), 1)

    return {
        "MEL": per_1000(est, ["MEL"]),
        "malignant": per_1000(est, MALIGNANT),
        "validation": {"MEL": per_1000(val, ["MEL"]), "malignant": per_1000(val, MALIGNANT)},
        "method": "EM on the card's posteriors (Saerens et al. 2002), no labels; assumes the images are alike",
        "prior": {c: float(p) for c, p in zip(classes, est)},
    }


def describe_expected(e: dict | None) -> str | None:
    """EM's rates as one sentence (the summary and the report), or None where there are none to give."""
    if not e or e.get("withheld"):
        return None
    return (
        f"expected without labels (EM): melanoma {e['MEL']:.0f} and any malignant lesion {e['malignant']:.0f} per "
        f"1,000 (validation {e['validation']['MEL']:.0f} and {e['validation']['malignant']:.0f})"
    )
