"""What a screening programme reads: figures at the bundle's operating point, with 95% intervals resampled by
lesion, overall and by age band, sex and body site.

Every figure comes with its interval and its counts: proportions (sensitivity, specificity, PPV, referrals) a Wilson
interval counted in lesions (`metrics.clustered_rate_intervals`), the others a lesion bootstrap
(`metrics.bootstrap_ci`); subgroups with fewer than `SMALL_GROUP` positives or negatives are marked, not hidden."""

from __future__ import annotations

import numpy as np
import pandas as pd

from skinscan.data import splits
from skinscan.evaluation.metrics import (
    binary_calibration,
    bootstrap_ci,
    classification_summary,
    clustered_rate_intervals,
    screening_rates,
    weighted_auc,
)
from skinscan.models.calibration import MALIGNANT_ORDERED, RULE_MEMBERS, FlagRule, rule_scores

SMALL_GROUP = 20
AGE_BANDS = [(0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+")]
SKIN_TYPE_NOTE = (
    "Skin type (Fitzpatrick) is not recorded in HAM10000, ISIC 2017 or ISIC 2019: how the model does on darker "
    "skin is unknown from these data."
)
RATES = ("sensitivity", "specificity", "ppv", "referrals_per_1000")


def lesion_groups(df: pd.DataFrame) -> np.ndarray:
    """Bootstrap unit per row: the split's grouping (the lesion id, or the image where none is recorded)."""
    return splits.lesion_groups(df).to_numpy()


def rule_decisions(probs: np.ndarray, y: np.ndarray, classes: list[str], rule: FlagRule) -> dict:
    """name -> (flagged, truly positive): each operating point alone (`MEL`, `malignant`), the screening flag
    (`flag`: any point fired; positive = a malignant class), and the flag on each point's own positives where they
    are not the flag's (`flag:MEL`: the flag's melanoma sensitivity, what a point chosen jointly is chosen for)."""
    fired = rule.fired(probs, classes)
    truth = np.array(classes)[y]
    flagged, malignant = fired.any(1), np.isin(truth, MALIGNANT_ORDERED)
    out = {name: (fired[:, j], np.isin(truth, members)) for j, (name, (members, _)) in enumerate(rule.points.items())}
    out["flag"] = (flagged, malignant)
    malignant_classes = {c for c in MALIGNANT_ORDERED if c in classes}
    for name, (members, _) in rule.points.items():  # decided by the model's classes, not by the rows at hand
        if set(members) & set(classes) != malignant_classes:
            out[f"flag:{name}"] = (flagged, np.isin(truth, members))
    return out


def flag_on(decided: dict, name: str):
    """(flagged by the screening flag, positive for point `name`) from `rule_decisions`' result; None without the
    point."""
    if name not in decided:
        return None
    return decided["flag"][0], decided[name][1]


def _with_ci(flagged, positive, groups, reps, seed) -> dict:
    """The rates with Wilson intervals counted in lesions (`clustered_rate_intervals`): they do not collapse at 0
    or 1 as percentile bootstrap intervals of proportions do."""
    point = screening_rates(flagged, positive)
    ci = clustered_rate_intervals(flagged, positive, groups) if reps > 0 else dict.fromkeys(point)
    return {
        **{k: {"value": point[k], "ci": ci[k]} for k in RATES},
        "positives": int(positive.sum()),
        "negatives": int((~positive).sum()),
        "flagged": int(flagged.sum()),
    }


def at_operating_point(
    probs: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    groups: np.ndarray,
    rule: FlagRule,
    reps=1000,
    seed=0,
    decide: np.ndarray | None = None,
) -> dict:
    """Sensitivity, specificity, PPV and referrals per 1,000 for each operating point and the screening flag,
    plus balanced accuracy, macro F1 (of the argmax of `decide`, default `probs`) and per-class AUC, each with a
    lesion-bootstrap 95% interval."""
    points = {
        name: _with_ci(f, p, groups, reps, seed) for name, (f, p) in rule_decisions(probs, y, classes, rule).items()
    }
    pred, k = (probs if decide is None else decide).argmax(1), len(classes)
    aucs = {c: weighted_auc(y == i, probs[:, i]) for i, c in enumerate(classes) if 0 < (y == i).sum() < len(y)}

    def stat(w):
        s = classification_summary(y, pred, k, w)
        return {"balanced_accuracy": s["balanced_accuracy"], "macro_f1": s["macro_f1"]} | {
            f"auc_{c}": f(w) for c, f in aucs.items()
        }

    point, ci = stat(None), bootstrap_ci(stat, groups, reps, seed)
    return {
        "rule": rule.describe(),
        "points": points,
        "overall": {k: {"value": v, "ci": ci[k]} for k, v in point.items()},
        "bootstrap": {"reps": reps, "unit": "lesion", "groups": int(len(np.unique(groups)))},
    }


def subgroup_columns(df: pd.DataFrame) -> dict[str, pd.Series]:
    """attribute -> group label per row, for the metadata the manifest has (age band, sex, site)."""
    out = {}
    if "age" in df and df["age"].notna().any():
        age = pd.to_numeric(df["age"], errors="coerce")
        band = pd.Series("unknown", index=df.index)
        for lo, hi, name in AGE_BANDS:
            band[(age >= lo) & (age < hi)] = name
        out["age"] = band
    for col in ("sex", "site"):
        if col in df and df[col].notna().any():
            out[col] = df[col].fillna("unknown").astype(str).str.strip().replace("", "unknown")
    return out


def by_subgroup(
    df: pd.DataFrame, probs: np.ndarray, y: np.ndarray, classes: list[str], rule: FlagRule, reps=500, seed=0
) -> list[dict]:
    """The screening flag's sensitivity (for any malignant lesion, and for melanoma), specificity and referrals, per
    subgroup, with intervals and counts; `small` marks groups with < SMALL_GROUP malignant positives or
    negatives."""
    groups = lesion_groups(df)
    rows = []
    for attr, labels in subgroup_columns(df).items():
        for g in sorted(labels.unique(), key=str):
            m = (labels == g).to_numpy()
            dec = rule_decisions(probs[m], y[m], classes, rule)
            flag = _with_ci(*dec["flag"], groups[m], reps, seed)
            row = {"attribute": attr, "group": g, "n": int(m.sum()), "flag": flag}
            mel = flag_on(dec, "MEL")  # the flag's melanoma sensitivity
            if mel is not None:
                row["MEL"] = _with_ci(*mel, groups[m], reps, seed)
            row["small"] = min(flag["positives"], flag["negatives"]) < SMALL_GROUP  # either rate rests on few
            rows.append(row)
    return rows


def fmt_ci(entry: dict, digits: int = 3, scale: float = 1.0) -> str:
    v, ci = entry["value"], entry["ci"]
    if v is None or not np.isfinite(v):
        return "n/a"
    s = f"{v * scale:.{digits}f}"
    return s + (f" ({ci[0] * scale:.{digits}f}-{ci[1] * scale:.{digits}f})" if ci else "")


def operating_point_markdown(op: dict) -> str:
    lines = [
        f"Rule: `{op['rule']}`. 95% intervals: Wilson, counted in lesions, for sensitivity, specificity, PPV and "
        f"referrals; {op['bootstrap']['reps']} bootstrap draws of {op['bootstrap']['groups']} lesions for the rest.",
        "",
        "| point | positives / negatives | sensitivity | specificity | PPV | referrals per 1,000 |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in op["points"].items():
        label = (
            "**screening flag** (any point; positive = MEL, BCC, SCC or AK)"
            if name == "flag"
            else f"screening flag on {name.split(':')[1]} (its sensitivity)"
            if name.startswith("flag:")
            else f"{name} point alone"
        )
        lines.append(
            f"| {label} | {p['positives']} / {p['negatives']} | {fmt_ci(p['sensitivity'])} | "
            f"{fmt_ci(p['specificity'])} | {fmt_ci(p['ppv'])} | {fmt_ci(p['referrals_per_1000'], 0)} |"
        )
    lines += ["", "| figure | value (95% CI) |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {fmt_ci(v)} |" for k, v in op["overall"].items()]
    return "\n".join(lines)


def subgroup_markdown(rows: list[dict]) -> str:
    if not rows:
        return "No age, sex or site recorded in this data set: no subgroup table.\n\n" + SKIN_TYPE_NOTE
    lines = [
        "| attribute | group | images | malignant / MEL | flag sensitivity | MEL sensitivity | specificity | "
        "referrals per 1,000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, mel = r["flag"], r.get("MEL")
        small = " (small: < 20 positives or negatives)" if r["small"] else ""
        lines.append(
            f"| {r['attribute']} | {r['group']}{small} | {r['n']} | {f['positives']} / "
            f"{mel['positives'] if mel else '-'} | {fmt_ci(f['sensitivity'], 2)} | "
            f"{fmt_ci(mel['sensitivity'], 2) if mel else '-'} | {fmt_ci(f['specificity'], 2)} | "
            f"{fmt_ci(f['referrals_per_1000'], 0)} |"
        )
    return "\n".join(lines) + "\n\n" + SKIN_TYPE_NOTE


def headline(op: dict, n: int) -> dict:
    """The few figures a comparison across data sets needs, from `at_operating_point`'s result: balanced accuracy,
    melanoma AUC, and the screening flag's sensitivity and specificity, each with its interval."""
    flag = op["points"]["flag"]
    return {
        "n": int(n),
        "balanced_accuracy": op["overall"]["balanced_accuracy"],
        "auc_MEL": op["overall"].get("auc_MEL", {"value": None, "ci": None}),
        "flag_sensitivity": flag["sensitivity"],
        "flag_specificity": flag["specificity"],
    }


def headline_markdown(rows: dict[str, dict], what: str) -> str:
    lines = [
        f"| {what} | images | balanced accuracy | melanoma AUC | flag sensitivity | flag specificity |",
        "|---|---|---|---|---|---|",
    ]
    for name, h in rows.items():
        lines.append(
            f"| {name} | {h['n']} | {fmt_ci(h['balanced_accuracy'])} | {fmt_ci(h['auc_MEL'])} | "
            f"{fmt_ci(h['flag_sensitivity'])} | {fmt_ci(h['flag_specificity'])} |"
        )
    return "\n".join(lines)


FLAG_SCORES = ("MEL", "malignant")
"""The scores operating points threshold, whose calibration is reported on its own."""


def score_calibration(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """`binary_calibration` of P(MEL) and P(malignant) (the classes the model has) against their truths."""
    truth = np.array(classes)[y]
    out = {}
    for name in FLAG_SCORES:
        members = [c for c in RULE_MEMBERS[name] if c in classes]
        if members:
            out[name] = binary_calibration(rule_scores(probs, classes, members), np.isin(truth, members))
    return out
