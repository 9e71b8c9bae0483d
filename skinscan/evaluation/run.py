"""`run(cfg)`: evaluate a classifier or segmenter bundle (the `skinscan evaluate` command and `jobs.evaluate`)."""

from __future__ import annotations

from pathlib import Path

from skinscan.config import EvaluateConfig
from skinscan.models.bundle import read_card


def default_output(cfg: EvaluateConfig) -> str:
    return cfg.output or str(Path(cfg.model) / ("evaluation" + (f"-{cfg.split}" if cfg.split else "")))


def run(cfg: EvaluateConfig) -> dict:
    out = default_output(cfg)
    if read_card(cfg.model).task == "segment":
        from skinscan.evaluation.segmentation import evaluate_segmenter

        r = evaluate_segmenter(cfg.model, cfg.data, out, cfg.split, cfg.backend)
        print(
            f"segmenter on {r['n']} images ({cfg.split or 'all'}): Dice {r['dice']:.4f} "
            f"(median {r['dice_median']:.4f}), Jaccard {r['iou']:.4f}; leakage {r['leakage'].get('overlapping')}"
        )
        print(f"-> {out}/segmentation.json")
        return r

    from skinscan.evaluation.classifier import evaluate

    r = evaluate(cfg.model, cfg.data, out, cfg.split, cfg.allow_overlap, cfg.backend, bootstrap=cfg.bootstrap)
    print_summary(r, out)
    if cfg.external:
        r["external"] = evaluate_external(cfg, r, out)
    return r


def evaluate_external(cfg: EvaluateConfig, main: dict, out: str) -> dict:
    """Each external data set in its own folder; one table of headline figures beside the main set's, appended to
    the main evaluation.md and printed."""
    import json

    from skinscan.evaluation.classifier import evaluate
    from skinscan.evaluation.operating import headline, headline_markdown

    rows = {f"{cfg.split or 'all'} of {Path(cfg.data).name}": headline(main["operating_point"], main["n_images"])}
    for name, data in cfg.external.items():
        sub = Path(out) / f"external-{name}"
        print(f"[evaluate] external data set {name}: {data}")
        r = evaluate(cfg.model, data, sub, None, cfg.allow_overlap, cfg.backend, bootstrap=cfg.bootstrap)
        rows[f"{name} (external)"] = headline(r["operating_point"], r["n_images"])
    table = headline_markdown(rows, "data set")
    md = Path(out) / "evaluation.md"
    md.write_text(
        md.read_text() + "\n## External data sets\n\nNever trained on; each has its own folder.\n\n" + table + "\n"
    )
    (Path(out) / "external.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return rows


def print_summary(r: dict, out: str) -> None:
    from skinscan.evaluation.operating import fmt_ci

    raw, over = r["raw"], r["oversampled"]
    print(f"leakage check: {r['leakage'].get('overlapping', 'n/a')} overlapping images")
    op = r["operating_point"]
    print(f"operating point: {op['rule']}")
    for name, p in op["points"].items():
        print(
            f"  {name:10s} sensitivity {fmt_ci(p['sensitivity'])}  specificity {fmt_ci(p['specificity'])}  "
            f"PPV {fmt_ci(p['ppv'])}  referrals/1000 {fmt_ci(p['referrals_per_1000'], 0)}"
        )
    c = r["calibration"]
    print(f"calibration: temperature {c['temperature']:.3f}; ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}")
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
