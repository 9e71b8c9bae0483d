"""Paired training runs: each variant trained with the same seeds, evaluated on the HAM10000 test split and on the
ISIC 2017 validation part (another clinic, never trained on). Same seed, same split, same schedule: the difference
between two variants' runs of one seed is the variant's effect, and the spread over seeds says how much of it is noise.

    python -m skinscan.bench.paired runs/paired [--seeds 0 1 2] [--set epochs=4 ...]

Each finished run appends one line to `<work>/paired.jsonl` and rewrites `<work>/paired.md`; a rerun skips the runs
already there, so an interrupted study continues where it stopped. Runs are sequential (one training at a time on
a small machine) and use a fixed number of epochs with no time budget, so the load of the machine cannot change
a result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SHARE = Path("../shared/data")
HAM = SHARE / "ham10000_200/HAM10000_metadata.csv"
ISIC2017 = SHARE / "isic2017_256"
# variant name -> (config file, overrides): the HAM-only reference and the options kept against it
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "ham": ("configs/train/ham10000_cpu.yaml", []),
    "ham+isic2017": ("configs/train/ham_isic2017_cpu.yaml", []),
    "ham+isic2017+sog": (
        "configs/train/ham_isic2017_cpu.yaml",
        ["colour_constancy_p=6", "augment.channel_gain=0.1"],
    ),
    "ham+isic2017+sog+metadata": (
        "configs/train/ham_isic2017_cpu.yaml",
        ["colour_constancy_p=6", "augment.channel_gain=0.1", "model.metadata=true"],
    ),
}
# a shorter schedule than the configs' own, so that three seeds of two variants fit one session
SCHEDULE = ["epochs=4", "max_train_samples_per_epoch=5000", "warmup_epochs=0.5", "time_budget_min=null"]


def external_manifest(work: Path) -> Path:
    """The ISIC 2017 validation part without any image that is also in its training part (one is, byte for byte:
    ISIC_0012127 = ISIC_0012970): what no variant trained on."""
    import pandas as pd

    from skinscan.data.splits import any_overlap

    out = work / "isic2017_val.csv"
    if not out.exists():
        parts = {}
        for part in ("validation", "training"):
            parts[part] = work / f"isic2017_{part}_all.csv"
            _skinscan("data", "manifest", str(ISIC2017 / "ISIC_2019_Training_GroundTruth.csv"), "--metadata",
                      str(ISIC2017 / "metadata.csv"), "--name", "isic2017", "--where", f"source_split={part}",
                      "-o", str(parts[part]))  # fmt: skip
        val, train = pd.read_csv(parts["validation"]), pd.read_csv(parts["training"])
        seen = any_overlap(train, val)
        n_seen = int(seen.sum())
        print(f"[paired] external set: {len(val) - n_seen} of {len(val)} images ({n_seen} also in training)")
        val[~seen].to_csv(out, index=False)
    return out


def _skinscan(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "skinscan.cli", *args], check=True)


def one_run(work: Path, variant: str, seed: int, extra: list[str], external: Path) -> dict:
    config, overrides = VARIANTS[variant]
    bundle = work / variant / f"seed{seed}"
    sets = [*SCHEDULE, *overrides, *extra, f"seed={seed}", f"output={bundle}", f"name=paired-{variant}-{seed}"]
    card = bundle / "model_card.json"
    if not (card.exists() and json.loads(card.read_text()).get("calibration")):  # a finished bundle is kept
        _skinscan("train", "--config", config, *[a for s in sets for a in ("--set", s)])
    ev = bundle / "evaluation-test"
    _skinscan("evaluate", "--model", str(bundle), "--data", str(HAM), "--split", "test", "-o", str(ev),
              "--bootstrap", "200", "--external", f"isic2017_val={external}")  # fmt: skip
    row = {"variant": variant, "seed": seed, **held_out_figures(ev), **val_figures(bundle), "overrides": sets}
    return row


def held_out_figures(ev: Path) -> dict:
    ext = json.loads((ev / "external.json").read_text())
    ham = next(v for k, v in ext.items() if not k.endswith("(external)"))
    other = ext["isic2017_val (external)"]
    return {
        "ham_test_balanced_accuracy": ham["balanced_accuracy"]["value"],
        "ham_test_auc_MEL": ham["auc_MEL"]["value"],
        "isic2017_val_auc_MEL": other["auc_MEL"]["value"],
        "isic2017_val_balanced_accuracy": other["balanced_accuracy"]["value"],
    }


def val_figures(bundle: Path) -> dict:
    """What selection may look at: the HAM10000 validation split (the same images for every variant) and the best
    epoch's pooled validation score (each variant's own validation split)."""
    ev = bundle / "evaluation-val"
    if not (ev / "evaluation.json").exists():
        # the validation split is part of what the model saw (selection): the leakage guard is told so
        _skinscan("evaluate", "--model", str(bundle), "--data", str(HAM), "--split", "val", "-o", str(ev),
                  "--bootstrap", "0", "--allow-overlap")  # fmt: skip
    r = json.loads((ev / "evaluation.json").read_text())
    history = json.loads((bundle / "history.json").read_text())
    return {
        "ham_val_balanced_accuracy": r["raw"]["balanced_accuracy"],
        "ham_val_auc_MEL": r["raw"]["auc"].get("MEL"),
        "pooled_val_balanced_accuracy": max(e["balanced_accuracy"] for e in history),
    }


def table(rows: list[dict]) -> str:
    """Per variant: each seed's figures and the mean, and the paired difference from the first variant."""
    keys = [
        ("ham_val_balanced_accuracy", "HAM val bal. acc."),
        ("ham_val_auc_MEL", "HAM val MEL AUC"),
        ("ham_test_balanced_accuracy", "HAM test bal. acc."),
        ("ham_test_auc_MEL", "HAM test MEL AUC"),
        ("isic2017_val_auc_MEL", "ISIC 2017 val MEL AUC"),
        ("isic2017_val_balanced_accuracy", "ISIC 2017 val bal. acc."),
    ]
    by = {(r["variant"], r["seed"]): r for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| variant | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    base = variants[0] if variants else None
    for v in variants:
        cells = []
        for k, _ in keys:
            vals = [by[v, s][k] for s in seeds if (v, s) in by and by[v, s].get(k) is not None]
            if not vals:
                cells.append("-")
                continue
            cell = " / ".join(f"{x:.3f}" for x in vals) + f" (mean {statistics.fmean(vals):.3f})"
            both = [s for s in seeds if (v, s) in by and (base, s) in by]
            paired = [by[v, s][k] - by[base, s][k] for s in both if None not in (by[v, s].get(k), by[base, s].get(k))]
            if v != base and paired:
                cell += f", paired diff {statistics.fmean(paired):+.3f} ({' '.join(f'{d:+.3f}' for d in paired)})"
            cells.append(cell)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nSeeds {seeds}, each cell: per seed / mean; schedule: {' '.join(SCHEDULE)}.\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m skinscan.bench.paired", description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", action="append", default=[], help="more overrides for every run")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "paired.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["variant"], r["seed"]) for r in rows}
    external = external_manifest(a.work)
    for seed in a.seeds:  # seed-major: an interrupted study still holds complete pairs
        for variant in a.variants:
            if (variant, seed) in done:
                continue
            row = one_run(a.work, variant, seed, a.set, external)
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            (a.work / "paired.md").write_text(table(rows))
            print(table(rows), flush=True)


if __name__ == "__main__":
    main()
