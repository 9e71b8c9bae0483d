"""Ray job: evaluate a classifier bundle on a labelled dataset.

ray job submit --working-dir . -- python jobs/evaluate.py --model BUNDLE --data MANIFEST --split test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(cfg: dict) -> dict:
    from skinscan.bundle import read_card
    from skinscan.evaluation.run import evaluate

    split = cfg.get("split")
    out = cfg.get("output") or str(Path(cfg["model"]) / ("evaluation" + (f"-{split}" if split else "")))
    if read_card(cfg["model"]).get("task") == "segment":
        from skinscan.evaluation.segmentation import evaluate_segmenter

        r = evaluate_segmenter(cfg["model"], cfg["data"], out, split, cfg.get("backend", "onnxruntime"))
        print(
            f"segmenter on {r['n']} images ({split or 'all'}): Dice {r['dice']:.4f} "
            f"(median {r['dice_median']:.4f}), Jaccard {r['iou']:.4f}; leakage {r['leakage'].get('overlapping')}"
        )
        print(f"-> {out}/segmentation.json")
        return r

    r = evaluate(
        cfg["model"],
        cfg["data"],
        out,
        split,
        cfg.get("allow_overlap", False),
        cfg.get("backend", "onnxruntime"),
    )
    raw, over = r["raw"], r["oversampled"]
    print(f"leakage check: {r['leakage'].get('overlapping', 'n/a')} overlapping images")
    print(
        f"raw        n={raw['n']:6d} acc {raw['accuracy']:.4f} bal-acc {raw['balanced_accuracy']:.4f} "
        f"macro-F1 {raw['macro_avg']['f1']:.4f}"
    )
    print(
        f"oversampled n={over['n']:5d} acc {over['accuracy']:.4f} bal-acc {over['balanced_accuracy']:.4f} "
        f"macro-F1 {over['macro_avg']['f1']:.4f}  (repeats images; not a real-world estimate)"
    )
    if r.get("ham10000_classes"):
        h = r["ham10000_classes"]
        print(
            f"HAM10000 7 classes (akiec = AK + SCC): acc {h['accuracy']:.4f} bal-acc {h['balanced_accuracy']:.4f} "
            f"macro-F1 {h['macro_f1']:.4f}"
        )
    if r.get("isic_official"):
        print(
            f"official ISIC scorer balanced accuracy {r['isic_official']['balanced_accuracy']:.6f} "
            f"(matches: {r['isic_official_matches']})"
        )
    print(f"-> {out}/evaluation.md, evaluation.json, isic_predictions.csv, *.png")
    return r


if __name__ == "__main__":
    from skinscan.cli import main, run_job_from_env
    from skinscan.jobs_client import EvaluateJob

    if "--from-env" in sys.argv:  # submitted with `skinscan submit`
        sys.exit(run_job_from_env(EvaluateJob, lambda cfg: run(cfg.model_dump())))
    sys.exit(main(["evaluate", *sys.argv[1:]]))
