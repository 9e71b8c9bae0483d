"""Seed ensembles, paired: the first bundle alone against the mean of several bundles' calibrated probabilities
(same splits, other seeds), each calibrated on validation as `skinscan calibrate` does, the flag's two thresholds
chosen jointly on validation; melanoma AUC with a lesion-bootstrap interval of the paired difference, balanced
accuracy and the flag on held-out sets, and the compute each costs (docs/experiments.md, issue 34 item 7).

    python -m skinscan.bench.ensembles SEED0 SEED1 [...] --sets test=SEED0/train_manifest.parquet:test isic=a.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from skinscan.bench.common import write_json
from skinscan.bench.flag_choice import figures, logits_of
from skinscan.evaluation.calibrate import choose_points
from skinscan.evaluation.metrics import balanced_accuracy, lesion_bootstrap_weights, weighted_auc
from skinscan.evaluation.operating import lesion_groups
from skinscan.models import calibration as cal
from skinscan.models.bundle import read_card


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--sets", nargs="+", required=True, metavar="NAME=MANIFEST[:SPLIT][,MANIFEST...]")
    p.add_argument("-o", "--out", default="ensembles.json")
    p.add_argument("--bootstrap", type=int, default=1000)
    a = p.parse_args(argv)
    classes = read_card(a.bundles[0]).class_names
    m = classes.index("MEL")
    specs = {"validation": f"{a.bundles[0]}/train_manifest.parquet:val"}
    specs |= dict(item.partition("=")[::2] for item in a.sets)
    members: list[dict] = []  # per bundle: set -> calibrated probabilities
    frames = {}
    for k, bundle in enumerate(a.bundles):
        cache = Path(a.out).parent / f"member{k}"
        cache.mkdir(parents=True, exist_ok=True)
        got = {name: logits_of(bundle, name, spec, classes, cache) for name, spec in specs.items()}
        frames = frames or {name: df for name, (df, _) in got.items()}
        for name, (df, _) in got.items():
            if not df["uri"].equals(frames[name]["uri"]):
                raise SystemExit(f"{bundle}: {name} decoded other rows than the first bundle's")
        val_df, val_logits = got["validation"]
        t, b = cal.fit_temperature_and_bias(val_logits, val_df["label"].map(classes.index).to_numpy())
        members.append({name: (cal.softmax(lg, t, b), b) for name, (_, lg) in got.items()})
    y = {name: df["label"].map(classes.index).to_numpy() for name, df in frames.items()}
    arms = {"seed 0 alone": members[:1], f"mean of {len(members)} seeds": members}
    out: dict = {"bundles": a.bundles, "n": {k: len(v) for k, v in frames.items()}}
    probs_of = {}
    for arm, ms in arms.items():
        probs = {name: np.mean([mb[name][0] for mb in ms], 0) for name in frames}
        bias = np.mean([mb["validation"][1] for mb in ms], 0)  # the offsets taken out for the predicted class
        probs_of[arm] = probs
        targets = {"MEL": 0.9, "malignant": 0.9}
        vg = lesion_groups(frames["validation"])
        points = choose_points(probs["validation"], y["validation"], classes, vg, targets, "val", 0, None, "joint")
        rule = cal.points_rule(points)
        out[arm] = {"compute_x": len(ms)}
        for name, df in frames.items():
            out[arm][name] = {
                "auc_MEL": round(float(weighted_auc(y[name] == m, probs[name][:, m])()), 4),
                "balanced_accuracy": round(
                    balanced_accuracy(y[name], cal.decision_scores(probs[name], bias).argmax(1)), 4
                ),
                **figures(probs[name], df, classes, rule),
            }
        print(arm, json.dumps(out[arm]), flush=True)
    one, many = probs_of.values()
    for name, df in frames.items():  # the paired difference in melanoma AUC, lesion bootstrap
        pos = y[name] == m
        a1, a2 = weighted_auc(pos, one[name][:, m]), weighted_auc(pos, many[name][:, m])
        diffs = []
        for w in lesion_bootstrap_weights(lesion_groups(df), a.bootstrap):
            d1, d2 = a1(w), a2(w)
            if d1 is not None and d2 is not None:
                diffs.append(d2 - d1)
        out.setdefault("auc_MEL_gain", {})[name] = {
            "value": round(float(a2() - a1()), 4),
            "ci": [round(float(np.quantile(diffs, q)), 4) for q in (0.025, 0.975)] if diffs else None,
        }
    print(json.dumps(out["auc_MEL_gain"]))
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
