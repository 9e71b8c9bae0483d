"""Another clinic, offline, for a bundle calibrated with class offsets (docs/experiments.md, issue 34): EM prior
adaptation on its held-out part without labels, and how many of its labelled images `skinscan calibrate --data`
needs before the flag's sensitivity lands within 0.05 of target (n drawn from its labelled pool, measured on every
other image; 100 draws each).

    python -m skinscan.bench.clinic_labels BUNDLE POOL.csv HELD_OUT.csv -o clinic.json
"""

import argparse
import json

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from skinscan.bench.common import write_json
from skinscan.data.taxonomy import MALIGNANT
from skinscan.evaluation.calibrate import choose_points
from skinscan.evaluation.classifier import predict_frame
from skinscan.evaluation.metrics import screening_rates
from skinscan.evaluation.operating import flag_on, rule_decisions
from skinscan.evaluation.priors import em_priors, reweight
from skinscan.models import calibration as cal
from skinscan.models.bundle import read_card


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("pool", help="the clinic's labelled pool (manifest CSV): calibration draws")
    p.add_argument("held_out", help="the clinic's held-out part (manifest CSV)")
    p.add_argument("-o", "--out", default="clinic_labels.json")
    p.add_argument("--confidence", default="0.95", help="as calibrate --confidence (0.95; none: point estimate)")
    a = p.parse_args(argv)
    a.confidence = None if a.confidence.lower() == "none" else float(a.confidence)
    bundle = a.bundle
    card = read_card(bundle)
    classes = card.class_names
    out = {}

    def frame(csv):
        df = pd.read_csv(csv)
        df = df[df["label"].isin(classes)].reset_index(drop=True)
        df, logits, _ = predict_frame(bundle, df, "torch", progress=False)
        return df, logits, df["label"].map(classes.index).to_numpy()

    def rates(flag, pos):
        return {k: float(v) for k, v in screening_rates(flag, pos).items() if k != "ppv"}

    val_df, val_logits, val_y = frame(a.held_out)
    tr_df, tr_logits, tr_y = frame(a.pool)
    rule = cal.card_rule(card)
    mal = np.array([c in MALIGNANT for c in classes])

    # item 4: EM on the unlabelled ISIC 2017 validation part, posteriors re-weighted to its estimated prior
    p = cal.card_probs(card, val_logits)
    truth_mal = mal[val_y]
    val_prior = np.array([card.calibration.val_prior[c] for c in classes])
    est = em_priors(p, val_prior)
    q = reweight(p, val_prior, est)
    m = classes.index("MEL")
    out["item4"] = {
        "n": int(len(val_y)),
        "true_MEL_per_1000": float(1000 * (val_y == m).mean()),
        "em_MEL_per_1000": float(1000 * est[m]),
        "validation_MEL_per_1000": float(1000 * val_prior[m]),
        "em_malignant_per_1000": float(1000 * est[mal].sum()),
        "true_malignant_per_1000": float(1000 * truth_mal.mean()),
        "card": {**rates(rule.apply(p, classes)[0], truth_mal), "auc_MEL": float(roc_auc_score(val_y == m, p[:, m]))},
        "em_adapted": {
            **rates(rule.apply(q, classes)[0], truth_mal),
            "auc_MEL": float(roc_auc_score(val_y == m, q[:, m])),
        },
    }

    # item 5: n labelled images of the new clinic (drawn from its training part) for calibrate --data; thresholds for
    # the card's targets chosen on them; measured on every other image of that clinic (the rest of the part + val)
    targets = {n: pt.target_sensitivity for n, pt in card.operating_points.items()}
    all_logits = np.concatenate([tr_logits, val_logits])
    all_y = np.concatenate([tr_y, val_y])
    n_tr = len(tr_y)
    rng = np.random.default_rng(0)
    curve = {}
    for n in [25, 50, 100, 200, 400, 800]:
        sens, spec, refs, mel_sens = [], [], [], []
        for _ in range(100):
            pick = rng.choice(n_tr, size=n, replace=False)
            rest = np.setdiff1d(np.arange(len(all_y)), pick)
            y_l = tr_y[pick]
            if not (y_l == m).any():
                continue
            t, b = cal.fit_temperature_and_bias(tr_logits[pick], y_l)  # what calibrate --data fits on the draw
            labelled = cal.softmax(tr_logits[pick], t, b)
            points = choose_points(labelled, y_l, classes, pick.astype(str), targets, "the draw", 0, a.confidence)
            decided = rule_decisions(cal.softmax(all_logits[rest], t, b), all_y[rest], classes, cal.points_rule(points))
            r = rates(*decided["flag"])
            sens.append(r["sensitivity"])
            spec.append(r["specificity"])
            refs.append(r["referrals_per_1000"])
            if "MEL" in decided:
                flagged, melanoma = flag_on(decided, "MEL")  # the flag's, which the MEL target is for
                mel_sens.append(flagged[melanoma].mean())
        mel_sens = np.array(mel_sens)
        curve[n] = {
            "reps": len(sens),
            "flag_sensitivity_median": float(np.median(sens)),
            "flag_specificity_median": float(np.median(spec)),
            "referrals_per_1000_median": float(np.median(refs)),
            "mel_sensitivity_median": float(np.median(mel_sens)),
            "mel_sensitivity_p5": float(np.percentile(mel_sens, 5)),
            "share_mel_within_0.05_of_target": float(np.mean(np.abs(mel_sens - targets.get("MEL", 0.9)) <= 0.05)),
            "share_mel_at_least_target_less_0.05": float(np.mean(mel_sens >= targets.get("MEL", 0.9) - 0.05)),
        }
    # the card's own point (HAM validation) on the same images, for reference
    pc = cal.card_probs(card, all_logits)
    f = rule.apply(pc, classes)[0]
    out["item5"] = {
        "targets": targets,
        "confidence": a.confidence,
        "pool": a.pool,
        "held_out": a.held_out,
        "card_point": {**rates(f, mal[all_y]), "mel_sensitivity": float(f[all_y == m].mean())},  # the flag's
        "curve": curve,
    }
    print(json.dumps(out, indent=1))
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
