"""Classifier evaluation: predictions over a labelled set, two passes, the ISIC metric, leakage guard, report."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from skinscan.config import DataConfig
from skinscan.data.manifest import build_manifest
from skinscan.data.sampling import oversample_indices
from skinscan.data.splits import near_text, overlap_mask, pictures_comparable
from skinscan.data.taxonomy import merge_to_ham
from skinscan.errors import DataError, ImageDecodeError, LeakageError
from skinscan.evaluation.shift import IMAGE_STATS, image_stats
from skinscan.models.bundle import local_bundle, read_card

OVERSAMPLED_NOTE = (
    "The oversampled pass repeats minority-class images (random duplication up to the largest class, "
    "as in the study). It does not estimate real-world performance; read the raw pass for that."
)


def select_eval_set(bundle: Path, data: str, split: str | None) -> pd.DataFrame:
    df = build_manifest(DataConfig(source=data))
    if split:
        if "split" not in df or df["split"].isna().all():
            trained = pd.read_parquet(bundle / "train_manifest.parquet", columns=["image_id", "split"])
            df = df.merge(trained, on="image_id", how="left")
            if df["split"].isna().all():
                raise DataError(
                    f"--split {split}: {data} has no split column and none of its images are in the "
                    f"model's training manifest"
                )
        df = df[df["split"] == split].reset_index(drop=True)
        if df.empty:
            raise DataError(f"--split {split}: no images in that split")
    return df


def leakage_check(bundle: Path, df: pd.DataFrame) -> dict:
    """Images of the evaluation set seen in training or validation (by image_id, content hash, lesion, near-duplicate
    picture)."""
    path = bundle / "train_manifest.parquet"
    if not path.exists():
        return {"checked": False, "reason": "the bundle has no training manifest"}
    seen = pd.read_parquet(path)
    if "split" in seen:
        seen = seen[seen["split"].isin(["train", "val"])]
    by_id, by_hash, by_lesion, by_near = overlap_mask(seen, df)
    anym = by_id | by_hash | by_lesion | by_near
    return {
        "checked": True,
        "training_images": int(len(seen)),
        "overlapping": int(anym.sum()),
        "by_image_id": int(by_id.sum()),
        "by_sha256": int(by_hash.sum()),
        "by_lesion_id": int(by_lesion.sum()),
        "by_near_duplicate": int(by_near.sum()) if pictures_comparable(seen, df) else None,
        "examples": df["image_id"][anym].head(5).tolist(),
    }


def predict_logits(
    bundle: Path,
    uris: list[str],
    backend: str,
    batch_size: int = 32,
    progress: bool = True,
    metadata: np.ndarray | None = None,
):
    """(logits, decode errors, image statistics) for every image (probabilities: `calibration.card_probs(card,
    logits)`); decode errors are returned, not raised, their rows' statistics NaN. `metadata` ([N, METADATA_DIM])
    goes to a model that reads it. The statistics are `evaluation.shift`'s, as the screening stage computes them."""
    from skinscan.data.preprocess import load_image, normalize_batch
    from skinscan.runtime import create_predictor

    predictor = create_predictor(bundle, backend, with_features=False)
    size, norm = predictor.card.input_size, predictor.card.normalization

    def load(u):
        try:
            return load_image(u, size)
        except ImageDecodeError as err:
            return err

    logits = np.zeros((len(uris), len(predictor.card.class_names)), np.float32)
    stats = np.full((len(uris), len(IMAGE_STATS)), np.nan, np.float32)
    errors: dict[int, str] = {}
    bar = tqdm(total=len(uris), desc="evaluate", unit="img", disable=not progress)
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(uris), batch_size):
            loaded = list(pool.map(load, uris[start : start + batch_size]))
            ok = [i for i, a in enumerate(loaded) if not isinstance(a, ImageDecodeError)]
            for i, a in enumerate(loaded):
                if isinstance(a, ImageDecodeError):
                    errors[start + i] = str(a)
            if ok:
                meta = None if metadata is None else metadata[[start + i for i in ok]]
                u8 = np.stack([loaded[i] for i in ok])
                out = predictor.predict(normalize_batch(u8, norm), meta)
                logits[[start + i for i in ok]] = out.logits
                stats[[start + i for i in ok]] = image_stats(u8)
            bar.update(len(loaded))
    bar.close()
    return logits, errors, stats


def predict_frame(bundle: Path, df: pd.DataFrame, backend: str, progress: bool = True):
    """(rows that decoded with their image statistics, their logits, decode errors) for a manifest frame (its age,
    sex and site go to a model that reads them)."""
    from skinscan.data.metadata import encode_frame

    meta = encode_frame(df) if read_card(bundle).uses_metadata else None
    logits, errors, stats = predict_logits(bundle, df["uri"].tolist(), backend, progress=progress, metadata=meta)
    keep = np.array([i not in errors for i in range(len(df))], bool)
    df = df.assign(**{c: stats[:, j] for j, c in enumerate(IMAGE_STATS)})  # the images' statistics, as rows carry
    return df[keep].reset_index(drop=True), logits[keep], errors


def _md_table(raw: dict, over: dict, classes: list[str]) -> str:
    lines = [
        "| class | precision | recall | F1 | support | precision (os) | recall (os) | F1 (os) | support (os) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in classes:
        a, b = raw["per_class"][c], over["per_class"][c]
        lines.append(
            f"| {c} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | {a['support']} | "
            f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} | {b['support']} |"
        )
    for avg in ("macro_avg", "weighted_avg"):
        a, b = raw[avg], over[avg]
        lines.append(
            f"| **{avg.replace('_', ' ')}** | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
            f"{a['support']} | {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} | {b['support']} |"
        )
    return "\n".join(lines)


def evaluate(
    bundle: str | Path,
    data: str,
    output: str | Path,
    split: str | None = None,
    allow_overlap: bool = False,
    backend: str = "onnxruntime",
    seed: int = 0,
    progress: bool = True,
    bootstrap: int = 1000,
) -> dict:
    from conversion.onnx_export import ensure_onnx
    from skinscan.evaluation.isic import official_score, write_isic_files
    from skinscan.evaluation.metrics import evaluate_probs, expected_calibration_error
    from skinscan.evaluation.operating import (
        at_operating_point,
        by_subgroup,
        headline,
        lesion_groups,
        score_calibration,
    )
    from skinscan.evaluation.plots import plot_binary_reliability, plot_confusion, plot_reliability, plot_roc
    from skinscan.models.calibration import card_probs, card_rule, decision_scores, nll, softmax

    bundle, out = local_bundle(bundle), Path(output)
    card = read_card(bundle)
    if card.task != "classify":
        raise DataError(f"{bundle} is a {card.task} bundle; evaluate needs a classifier")
    classes = card.class_names
    df = select_eval_set(bundle, data, split)
    unlabeled = int(df["label"].isna().sum())
    outside = sorted(set(df["label"].dropna()) - set(classes))
    df = df[df["label"].isin(classes)].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{data}: no images labelled with the model's classes {classes}")
    leakage = leakage_check(bundle, df)
    if leakage.get("overlapping") and not allow_overlap:
        raise LeakageError(
            f"{leakage['overlapping']} of {len(df)} evaluation images overlap the model's training "
            f"data (image_id {leakage['by_image_id']}, content {leakage['by_sha256']}, lesion "
            f"{leakage['by_lesion_id']}); remove them (skinscan data overlap) or pass --allow-overlap"
        )
    if backend == "onnxruntime":
        ensure_onnx(bundle)
    t0 = time.time()
    df, logits, errors = predict_frame(bundle, df, backend, progress)
    y = df["label"].map(classes.index).to_numpy()
    probs = card_probs(card, logits)  # the card's temperature and offsets: what every screening backend applies
    decide = decision_scores(probs, card.class_bias)  # the predicted class: offsets out (a balanced decision)
    raw = evaluate_probs(y, probs, classes, decide)
    ece_before, reliability_before = expected_calibration_error(y, softmax(logits))
    calibration = {
        "temperature": card.temperature,
        "fitted_on": card.calibration.fitted_on if card.calibration else None,
        "nll_before": nll(logits, y),
        "nll_after": nll(logits, y, card.temperature, card.class_bias),
        "ece_before": ece_before,
        "ece_after": raw["ece"],
        "class_bias": card.class_bias,
    }
    # the thresholded scores: uncalibrated, the card's temperature without its offsets, and as the card defines them
    flag_scores = {
        "uncalibrated": score_calibration(softmax(logits), y, classes),
        "no offsets": score_calibration(decide, y, classes),  # = softmax(logits / temperature)
        "card": score_calibration(probs, y, classes),
    }
    rule = card_rule(card)
    operating = at_operating_point(probs, y, classes, lesion_groups(df), rule, bootstrap, seed, decide)
    subgroups = by_subgroup(df, probs, y, classes, rule, min(bootstrap, 500), seed)
    by_source = {}
    if "source" in df and df["source"].nunique() > 1:  # several sources: each beside the pooled figure
        groups = lesion_groups(df)
        for src in sorted(df["source"].dropna().unique()):
            m = (df["source"] == src).to_numpy()
            one = at_operating_point(probs[m], y[m], classes, groups[m], rule, min(bootstrap, 500), seed, decide[m])
            by_source[str(src)] = headline(one, m.sum())
        by_source["pooled"] = headline(operating, len(y))
    idx = oversample_indices(y, seed)
    over = evaluate_probs(y[idx], probs[idx], classes, decide[idx])
    out.mkdir(parents=True, exist_ok=True)
    files = write_isic_files(df["image_id"].tolist(), y, decide, classes, out)  # what a challenge entry submits
    official = official_score(files["truth_scored"], files["predictions_scored"])
    result = {
        "model": str(bundle),
        "data": data,
        "split": split,
        "backend": backend,
        "classes": classes,
        "n_images": int(len(df)),
        "decode_errors": list(errors.values()),
        "unlabeled_skipped": unlabeled,
        "labels_outside_model_skipped": outside,
        "leakage": leakage,
        "allow_overlap": allow_overlap,
        "predict_s": round(time.time() - t0, 1),
        "operating_point": operating,
        "subgroups": subgroups,
        "by_source": by_source,
        "calibration": calibration,
        "flag_score_calibration": {
            name: {k: v[name] for k, v in flag_scores.items() if v.get(name)} for name in flag_scores["card"]
        },
        "card_operating_points": {k: v.model_dump() for k, v in card.operating_points.items()},
        "raw": raw,
        "oversampled": over,
        "oversampled_note": OVERSAMPLED_NOTE,
        "majority_baseline": {
            "accuracy": float(np.bincount(y).max() / len(y)),
            "balanced_accuracy": 1.0 / len(np.unique(y)),
        },
        "isic_official": official,
    }
    ham = ham10000_view(y, probs, classes)
    if ham is not None:
        result["ham10000_classes"] = ham
    if official is not None:
        result["isic_official_matches"] = abs(official["balanced_accuracy"] - raw["isic_balanced_accuracy"]) <= 1e-9
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    plot_confusion(np.array(raw["confusion_matrix"]), classes, out / "confusion_raw.png", "raw")
    plot_confusion(np.array(over["confusion_matrix"]), classes, out / "confusion_oversampled.png", "oversampled")
    plot_roc(y, probs, classes, raw["auc"], out / "roc.png")
    how = f"temperature {card.temperature:.2f}" + (", class offsets" if card.class_bias else "")
    plot_reliability(raw["reliability"], raw["ece"], out / "reliability.png", how)
    plot_reliability(reliability_before, ece_before, out / "reliability_uncalibrated.png", "uncalibrated")
    for name, curves in result["flag_score_calibration"].items():
        shown = {k: c for k, c in curves.items() if k == "card" or (k == "no offsets" and card.class_bias)}
        plot_binary_reliability(shown, out / f"reliability_{name}.png", f"P({name})")
    (out / "evaluation.md").write_text(render_markdown(result))
    return result


def ham10000_view(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict | None:
    """Raw-distribution metrics in HAM10000's seven `dx` classes (AK + SCC = `akiec`), the taxonomy of HAM10000
    results in the literature; None unless the model has both AK and SCC (nothing to merge) and no other class."""
    from skinscan.evaluation.metrics import balanced_accuracy, classification_report

    merged = merge_to_ham(probs, classes)
    if merged is None or len(merged[1]) == len(classes):
        return None
    probs7, dx, index = merged
    y7, pred7 = index[y], probs7.argmax(1)
    report = classification_report(y7, pred7, dx)
    return {
        "note": "AK and SCC probabilities summed into akiec, truths merged likewise (HAM10000 dx codes)",
        "classes": dx,
        "n": int(len(y7)),
        "accuracy": report["accuracy"],
        "balanced_accuracy": balanced_accuracy(y7, pred7),
        "macro_f1": report["macro_avg"]["f1"],
        "per_class": report["per_class"],
        "majority_baseline": {
            "accuracy": float(np.bincount(y7).max() / len(y7)),
            "balanced_accuracy": 1.0 / len(np.unique(y7)),
        },
    }


def _ham_md(r: dict) -> str:
    h = r.get("ham10000_classes")
    if not h:
        return ""
    per = ", ".join(f"{c} {v['recall']:.2f}" for c, v in h["per_class"].items())
    return (
        f"\n\nIn HAM10000's seven dx classes (AK + SCC probabilities summed into akiec): accuracy {h['accuracy']:.4f}, "
        f"balanced accuracy {h['balanced_accuracy']:.4f}, macro F1 {h['macro_f1']:.4f} (majority class: "
        f"{h['majority_baseline']['accuracy']:.4f} / {h['majority_baseline']['balanced_accuracy']:.4f}); "
        f"recall per class: {per}.\n"
    )


def render_markdown(r: dict) -> str:
    raw, over = r["raw"], r["oversampled"]
    mel = raw.get("melanoma_sensitivity_at_specificity", {})
    leak = r["leakage"]
    leak_line = (
        f"{leak['overlapping']} overlapping images (image_id {leak['by_image_id']}, content "
        f"{leak['by_sha256']}, lesion {leak['by_lesion_id']}, "
        f"near-duplicate picture {near_text(leak.get('by_near_duplicate'))})"
        if leak.get("checked")
        else leak.get("reason")
    )
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    auc = ", ".join(f"{c} {fmt(v)}" for c, v in raw["auc"].items())
    official = r.get("isic_official")
    official_line = f"balanced accuracy {official['balanced_accuracy']:.6f}" if official else "not installed"
    return f"""# Evaluation of `{r["model"]}`

Data: `{r["data"]}` split `{r["split"]}`, {r["n_images"]} images, backend {r["backend"]}.
Leakage check against the training manifest: {leak_line}.

{_operating_md(r)}

## All figures

| | raw distribution | oversampled distribution |
|---|---|---|
| images | {raw["n"]} | {over["n"]} |
| accuracy | {raw["accuracy"]:.4f} | {over["accuracy"]:.4f} |
| balanced accuracy | {raw["balanced_accuracy"]:.4f} | {over["balanced_accuracy"]:.4f} |
| macro F1 | {raw["macro_avg"]["f1"]:.4f} | {over["macro_avg"]["f1"]:.4f} |
| weighted F1 | {raw["weighted_avg"]["f1"]:.4f} | {over["weighted_avg"]["f1"]:.4f} |
| ECE | {raw["ece"]:.4f} | {over["ece"]:.4f} |

Majority-class baseline (raw): accuracy {r["majority_baseline"]["accuracy"]:.4f}, balanced accuracy
{r["majority_baseline"]["balanced_accuracy"]:.4f}.{_ham_md(r)}
Official ISIC scorer: {official_line}.
Melanoma sensitivity at 80% / 90% specificity: {fmt(mel.get("0.80"))} / {fmt(mel.get("0.90"))}.
AUC (one vs rest): {auc}.

{_calibration_md(r)}

> {r["oversampled_note"]}

## Classification report (raw | oversampled, "os")

{_md_table(raw, over, r["classes"])}

![confusion](confusion_raw.png)
![roc](roc.png)
![reliability](reliability.png)
![reliability, uncalibrated](reliability_uncalibrated.png)

{_flag_scores_md(r)}
"""


def _operating_md(r: dict) -> str:
    """The opening: what a screening programme would see at the bundle's operating point."""
    from skinscan.evaluation.operating import fmt_ci, headline_markdown, operating_point_markdown, subgroup_markdown

    op = r["operating_point"]
    flag = op["points"]["flag"]
    mel = op["points"].get("flag:MEL")  # the flag's melanoma sensitivity
    source = "chosen on validation" if r["card_operating_points"] else "none in the card: the default 0.5 rule"
    head = (
        f"**At the bundle's operating point** ({source}): "
        f"{fmt_ci(flag['referrals_per_1000'], 0)} referrals per 1,000 screened; "
        + (f"melanoma sensitivity {fmt_ci(mel['sensitivity'])}; " if mel else "")
        + f"sensitivity for any malignant lesion {fmt_ci(flag['sensitivity'])}, specificity "
        f"{fmt_ci(flag['specificity'])} (95% intervals, bootstrap by lesion)."
    )
    sources = f"\n\n## By source\n\n{headline_markdown(r['by_source'], 'source')}" if r.get("by_source") else ""
    return (
        f"## Operating point\n\n{head}\n\n{operating_point_markdown(op)}\n\n## By age, sex and site\n\n"
        f"{subgroup_markdown(r['subgroups'])}{sources}"
    )


def _flag_scores_md(r: dict) -> str:
    """The thresholded scores' calibration: slope (1 ideal), intercept (0 ideal), mean score against the rate."""
    rows = []
    for name, curves in r.get("flag_score_calibration", {}).items():
        for how, c in curves.items():
            rows.append(
                f"| P({name}) | {how} | {c['slope']:.2f} | {c['intercept']:+.2f} | {c['mean_score']:.3f} | "
                f"{c['observed_rate']:.3f} | {c['ece']:.3f} |"
            )
    if not rows:
        return ""
    pictures = " ".join(f"![P({n})](reliability_{n}.png)" for n in r["flag_score_calibration"])
    return (
        "## Calibration of the flagged scores\n\n| score | probabilities | slope | intercept | mean score | observed "
        "rate | ECE |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + f"\n\n{pictures}"
    )


def _calibration_md(r: dict) -> str:
    c = r["calibration"]
    if c["fitted_on"] is None:
        return f"Calibration: none in the card (temperature 1); NLL {c['nll_before']:.4f}, ECE {c['ece_before']:.4f}."
    return (
        f"Calibration: temperature {c['temperature']:.3f}{' and class offsets' if c.get('class_bias') else ''} "
        f"(fitted on {c['fitted_on']}); on these images NLL "
        f"{c['nll_before']:.4f} -> {c['nll_after']:.4f}, ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}."
    )
