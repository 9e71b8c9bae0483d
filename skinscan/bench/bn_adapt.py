"""Batch-norm statistics re-estimated on the archive itself (adaptation without labels, issue 34 item 4), paired
against the bundle as trained: melanoma AUC and the flag at the card's own point, on each set with the statistics
of that whole set (what a screening run could do before screening), and on the HAM test split as a control.

    python -m skinscan.bench.bn_adapt BUNDLE test=BUNDLE/train_manifest.parquet:test isic2017=a.csv,b.csv
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from skinscan.bench.common import labelled_frame, write_json
from skinscan.data.preprocess import load_image, normalize_batch
from skinscan.data.taxonomy import MALIGNANT
from skinscan.evaluation.metrics import screening_rates, weighted_auc
from skinscan.models import calibration as cal
from skinscan.models.bundle import load_bundle


def batches(uris: list[str], size: int, norm, batch: int = 64):
    for s in range(0, len(uris), batch):
        x = normalize_batch(np.stack([load_image(u, size) for u in uris[s : s + batch]]), norm)
        yield torch.from_numpy(x)


@torch.no_grad()
def logits(model: torch.nn.Module, uris: list[str], card) -> np.ndarray:
    model.eval()
    return np.concatenate([model(x).float().numpy() for x in batches(uris, card.input_size, card.normalization)])


@torch.no_grad()
def reestimated(model: torch.nn.Module, uris: list[str], card) -> torch.nn.Module:
    """A copy whose batch-norm running statistics are the cumulative mean and variance over these images."""
    m = copy.deepcopy(model)
    bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch
    m.train()
    for x in batches(uris, card.input_size, card.normalization):
        m(x)
    return m.eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("sets", nargs="+", metavar="NAME=MANIFEST[:SPLIT][,MANIFEST...]")
    p.add_argument("-o", "--out", default="bn_adapt.json")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    model, card = load_bundle(a.bundle)
    classes = card.class_names
    rule, m = cal.card_rule(card), classes.index("MEL")
    out = {"bundle": a.bundle, "batch_norm_layers": sum(isinstance(x, torch.nn.BatchNorm2d) for x in model.modules())}
    for item in a.sets:
        name, _, spec = item.partition("=")
        df = labelled_frame(spec, classes)
        uris, y = df["uri"].tolist(), df["label"].map(classes.index).to_numpy()
        malignant = np.isin(np.array(classes)[y], sorted(MALIGNANT))
        res = {"n": len(df)}
        for arm, net in (("as trained", model), ("statistics of this set", reestimated(model, uris, card))):
            probs = cal.card_probs(card, logits(net, uris, card))
            r = screening_rates(rule.apply(probs, classes)[0], malignant)
            res[arm] = {
                "auc_MEL": round(float(weighted_auc(y == m, probs[:, m])()), 4),
                "flag_sensitivity": round(float(r["sensitivity"]), 4),
                "flag_specificity": round(float(r["specificity"]), 4),
            }
        res["auc_MEL_change"] = round(res["statistics of this set"]["auc_MEL"] - res["as trained"]["auc_MEL"], 4)
        out[name] = res
        print(name, json.dumps(res), flush=True)
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
