"""How the flag's two thresholds are chosen, paired on one bundle's logits: each point alone or both jointly for
the flag as deployed, at the point estimate or at a 95% lower bound; fitted on validation (temperature and class
offsets, as `skinscan calibrate`), measured on held-out sets (docs/experiments.md, issue 34 item 2).

    python -m skinscan.bench.flag_choice BUNDLE test=BUNDLE/train_manifest.parquet:test isic2017=a.csv,b.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from skinscan.bench.common import labelled_frame, write_json
from skinscan.evaluation.calibrate import choose_points
from skinscan.evaluation.classifier import predict_frame
from skinscan.evaluation.metrics import clustered_rate_intervals, screening_rates
from skinscan.evaluation.operating import flag_on, lesion_groups, rule_decisions
from skinscan.models import calibration as cal
from skinscan.models.bundle import read_card

ARMS = {  # name -> (choice, confidence)
    "alone": ("alone", None),
    "joint": ("joint", None),
    "alone, 95% bound": ("alone", 0.95),
    "joint, 95% bound": ("joint", 0.95),
}


def logits_of(bundle: str, name: str, spec: str, classes: list[str], cache: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The set's rows that decode and their logits (cached beside the output: a rerun predicts nothing again)."""
    df = labelled_frame(spec, classes)
    f = cache / f"logits_{name}.npz"
    if f.exists():
        z = np.load(f, allow_pickle=True)
        keep = pd.Index(df["uri"]).get_indexer(z["uri"])
        return df.iloc[keep].reset_index(drop=True), z["logits"]
    df, logits, _ = predict_frame(bundle, df, "torch", progress=False)
    np.savez(f, uri=df["uri"].to_numpy(object), logits=logits)
    return df, logits


def figures(probs: np.ndarray, df: pd.DataFrame, classes: list[str], rule: cal.FlagRule) -> dict:
    y = df["label"].map(classes.index).to_numpy()
    decided = rule_decisions(probs, y, classes, rule)
    flagged, positive = decided["flag"]
    r = screening_rates(flagged, positive)
    ci = clustered_rate_intervals(flagged, positive, lesion_groups(df))
    out = {k: round(float(r[k]), 4) for k in ("sensitivity", "specificity", "referrals_per_1000")}
    out |= {f"{k}_ci": [round(c, 4) for c in ci[k]] for k in ("sensitivity", "specificity") if ci[k]}
    _, melanoma = flag_on(decided, "MEL") or (None, None)
    if melanoma is not None and melanoma.any():
        out["mel_sensitivity_of_the_flag"] = round(float(flagged[melanoma].mean()), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("sets", nargs="+", metavar="NAME=MANIFEST[:SPLIT][,MANIFEST...]")
    p.add_argument("--val", help="validation manifest (default: the bundle's own validation split)")
    p.add_argument("-o", "--out", default="flag_choice.json")
    a = p.parse_args(argv)
    card = read_card(a.bundle)
    classes = card.class_names
    cache = Path(a.out).parent
    cache.mkdir(parents=True, exist_ok=True)
    val_df, val_logits = logits_of(a.bundle, "val", a.val or f"{a.bundle}/train_manifest.parquet:val", classes, cache)
    y = val_df["label"].map(classes.index).to_numpy()
    t, bias = cal.fit_temperature_and_bias(val_logits, y)
    sets = {"validation": (val_df, val_logits)}
    for item in a.sets:
        name, _, spec = item.partition("=")
        sets[name] = logits_of(a.bundle, name, spec, classes, cache)
    targets = {"MEL": 0.9, "malignant": 0.9}
    groups = lesion_groups(val_df)
    probs = {name: cal.softmax(lg, t, bias) for name, (_, lg) in sets.items()}
    out = {"bundle": a.bundle, "temperature": t, "targets": targets, "n": {k: len(v[0]) for k, v in sets.items()}}
    for arm, (choice, confidence) in ARMS.items():
        points = choose_points(probs["validation"], y, classes, groups, targets, "val", 0, confidence, choice)
        rule = cal.points_rule(points)
        out[arm] = {"thresholds": {n: round(pt.threshold, 4) for n, pt in points.items()}}
        out[arm] |= {name: figures(probs[name], df, classes, rule) for name, (df, _) in sets.items()}
        print(arm, json.dumps(out[arm]), flush=True)
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
