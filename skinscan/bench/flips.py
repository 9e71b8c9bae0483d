"""Test-time flips: what averaging the probabilities of an image and its flips buys (melanoma AUC, balanced
accuracy, the flag at the card's point) per unit of compute, on labelled sets, in one run (docs/experiments.md).

    python -m skinscan.bench.flips BUNDLE test=BUNDLE/train_manifest.parquet:test isic2017=isic2017_val.csv
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from skinscan.bench.common import labelled_frame, write_json
from skinscan.data.preprocess import load_image, normalize_batch
from skinscan.data.taxonomy import MALIGNANT
from skinscan.evaluation.metrics import balanced_accuracy, screening_rates
from skinscan.models import calibration as cal
from skinscan.runtime import create_predictor

COMBOS = (("plain",), ("plain", "hflip"), ("plain", "hflip", "vflip"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("sets", nargs="+", metavar="NAME=MANIFEST[:SPLIT]")
    p.add_argument("-o", "--out", default="flips.json")
    a = p.parse_args(argv)
    pred = create_predictor(a.bundle, "torch", with_features=False)
    card, classes = pred.card, pred.card.class_names
    rule, m = cal.card_rule(card), classes.index("MEL")
    out = {}
    for item in a.sets:
        name, _, spec = item.partition("=")
        df = labelled_frame(spec, classes)
        imgs = np.stack([load_image(u, card.input_size) for u in df["uri"]])
        y = df["label"].map(classes.index).to_numpy()
        malignant = np.isin(np.array(classes)[y], sorted(MALIGNANT))
        logits, seconds = {}, {}
        for view, im in {"plain": imgs, "hflip": imgs[:, :, ::-1], "vflip": imgs[:, ::-1]}.items():
            t = time.perf_counter()
            batches = [np.ascontiguousarray(im[i : i + 64]) for i in range(0, len(im), 64)]
            logits[view] = np.concatenate(
                [pred.predict(normalize_batch(b, card.normalization)).logits for b in batches]
            )
            seconds[view] = time.perf_counter() - t
        res = {"n": int(len(y)), "seconds_per_view": round(seconds["plain"], 1)}
        for combo in COMBOS:
            probs = np.mean([cal.card_probs(card, logits[v]) for v in combo], 0)
            rates = screening_rates(rule.apply(probs, classes)[0], malignant)
            res["+".join(combo)] = {
                "compute_x": len(combo),
                "auc_MEL": round(float(roc_auc_score(y == m, probs[:, m])), 4),
                "balanced_accuracy": round(
                    balanced_accuracy(y, cal.decision_scores(probs, card.class_bias).argmax(1)), 4
                ),
                "flag_sensitivity": round(float(rates["sensitivity"]), 4),
                "flag_specificity": round(float(rates["specificity"]), 4),
            }
        out[name] = res
        print(name, json.dumps(res))
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
