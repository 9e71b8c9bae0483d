"""`skinscan calibrate` (and the end of training): temperature scaling, class offsets that undo the training prior,
and operating points, fitted on a validation set only, written into the bundle's card.

The test split is refused: a threshold chosen where it is then measured reports the sensitivity it was asked for,
not the one a programme will get."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinscan.config import CalibrateConfig, FlagTargets
from skinscan.errors import ConfigError, DataError
from skinscan.evaluation.metrics import (
    clustered_rate_intervals,
    expected_calibration_error,
    screening_rates,
    wilson_interval,
)
from skinscan.evaluation.operating import lesion_groups, rule_decisions, score_calibration
from skinscan.models import calibration as cal
from skinscan.models.bundle import Calibration, ModelCard, OperatingPoint, read_card, record_calibration


def _reaches(target: float, confidence: float | None, lesions: int):
    """Whether a sensitivity on positives from `lesions` lesions meets `target`: the point estimate (`confidence`
    None), or its one-sided lower `confidence` bound (Wilson, counted in lesions, as `clustered_rate_intervals`)."""
    if confidence is None:
        return lambda sens: sens >= target - 1e-12
    level = 2 * confidence - 1  # a two-sided interval at this level has the one-sided bound below
    return lambda sens: (wilson_interval(sens * lesions, lesions, level) or [0.0])[0] >= target


def threshold_at_confidence(scores: np.ndarray, positive: np.ndarray, reaches, start: float) -> float | None:
    """The highest threshold (at or below `start`, the point estimate's) whose sensitivity `reaches` the target (a
    `_reaches` test: its one-sided lower bound, Wilson, counted in lesions); None when flagging every positive does
    not reach it (too few lesions for that confidence)."""
    for t in np.unique(scores[positive & (scores <= start)])[::-1]:
        if reaches(float((scores[positive] >= t).mean())):
            return float(t)
    return None


def joint_thresholds(
    scores: list[np.ndarray], positives: list[np.ndarray], reaches: list, negative: np.ndarray
) -> tuple[float, float] | None:
    """Two thresholds chosen together for the flag as deployed (either point fires): of the pairs at which the flag
    reaches each point's target on that point's positives, the one that flags the fewest `negative` rows (then the
    fewest rows). Candidates are the scores of positives (a threshold between two of them only costs specificity);
    for each first threshold the highest second one that still reaches both targets is found by bisection (raising
    a threshold never adds a flag). None when no pair reaches both."""
    (sa, sb), anypos = scores, np.logical_or.reduce(positives)
    ca, cb = np.unique(sa[anypos]), np.unique(sb[anypos])

    def ok(flag: np.ndarray) -> bool:
        return all(r(float(flag[p].mean())) for r, p in zip(reaches, positives))

    best = None
    for ta in ca:
        fa = sa >= ta
        if not ok(fa | (sb >= cb[0])):
            continue
        lo, hi = 0, len(cb) - 1
        while lo < hi:  # the highest second threshold that still reaches both targets
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(fa | (sb >= cb[mid])) else (lo, mid - 1)
        flag = fa | (sb >= cb[lo])
        key = (int(flag[negative].sum()), int(flag.sum()))
        if best is None or key < best[0]:
            best = (key, float(ta), float(cb[lo]))
    return None if best is None else (best[1], best[2])


def choose_points(
    probs: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    groups: np.ndarray,
    targets: dict[str, float],
    where: str,
    reps: int = 1000,
    confidence: float | None = None,
    choice: str = "joint",
) -> dict[str, OperatingPoint]:
    """Thresholds for the targets on these (validation) rows, each reaching its target as a point estimate
    (`confidence` None) or at the lower bound of its `confidence` interval, so that the target holds at that
    confidence and not only about half the time. `choice="alone"`: each point the most specific that reaches its
    target by itself; "joint" (two points): the pair at which the flag as deployed (either fires) reaches each target
    on that point's positives with the fewest negatives flagged (a point may then miss its target alone: the other
    point's flags cover its positives)."""
    truth = np.array(classes)[y]
    groups = np.asarray(groups, dtype=str)
    found: dict[str, tuple] = {}  # name -> (members, scores, positive, its target test, threshold chosen alone)
    for name, target in targets.items():
        members = [c for c in cal.RULE_MEMBERS[name] if c in classes]
        positive = np.isin(truth, members)
        if not members or not positive.any() or positive.all():
            print(f"[calibrate] {name}: no positives and negatives in {where}; no operating point")
            continue
        scores = cal.rule_scores(probs, classes, members)
        reaches = _reaches(target, confidence, len(np.unique(groups[positive])))
        t = cal.threshold_for_sensitivity(scores, positive, target)[0]
        if confidence is not None:
            bound = threshold_at_confidence(scores, positive, reaches, t)
            if bound is None:
                bound = float(scores[positive].min())
                print(
                    f"[calibrate] {name}: {positive.sum()} positives are too few for sensitivity {target:.2f} at "
                    f"{confidence:.0%} confidence; the threshold flags every positive of {where}"
                )
            t = bound
        found[name] = (members, scores, positive, reaches, t)
    thresholds, chosen = {n: f[4] for n, f in found.items()}, "alone"
    if choice == "joint" and len(found) == 2:
        _, scores, positives, tests, _ = zip(*found.values())
        pair = joint_thresholds(list(scores), list(positives), list(tests), ~np.logical_or.reduce(positives))
        if pair is not None:
            thresholds, chosen = dict(zip(found, pair)), "joint"
        else:
            how = f" at {confidence:.0%} confidence" if confidence is not None else ""
            print(f"[calibrate] no pair of thresholds reaches both targets{how} on {where}: each point chosen alone")
    elif choice == "joint" and len(found) > 2:
        print(f"[calibrate] the joint choice is for two points, not {len(found)}: each point chosen alone")
    flag = np.logical_or.reduce([f[1] >= thresholds[n] for n, f in found.items()]) if found else None
    points = {}
    for name, (members, scores, positive, reaches, _) in found.items():
        t = thresholds[name]
        flagged = scores >= t
        ci = clustered_rate_intervals(flagged, positive, groups)["sensitivity"]  # Wilson, counted in lesions
        meets = float((flag if chosen == "joint" else flagged)[positive].mean())  # what the target is held by
        points[name] = OperatingPoint(
            classes=members,
            threshold=t,
            target_sensitivity=targets[name],
            target_confidence=confidence,
            bound_reached=None if confidence is None else bool(reaches(meets)),
            chosen_on=where,
            chosen=chosen,
            val_sensitivity=float(flagged[positive].mean()),
            val_sensitivity_ci=ci,
            val_flag_sensitivity=float(flag[positive].mean()),
            val_specificity=float((~flagged[~positive]).mean()),
            val_positives=int(positive.sum()),
            val_negatives=int((~positive).sum()),
            val_referrals_per_1000=float(1000 * flagged.mean()),
        )
    return points


def whole_flag(probs: np.ndarray, y: np.ndarray, classes: list[str], groups, points: dict) -> dict | None:
    """The flag as deployed (any point fires) on these rows, against any malignant lesion: sensitivity, specificity
    and referrals per 1,000, each with its Wilson interval counted in lesions."""
    if not points:
        return None
    rule = cal.points_rule(points)
    flagged, positive = rule_decisions(probs, y, classes, rule)["flag"]
    if not positive.any() or positive.all():
        return None
    rates = {k: v for k, v in screening_rates(flagged, positive).items() if k in ("sensitivity", "specificity")}
    ci = clustered_rate_intervals(flagged, positive, groups)
    return {
        "rule": rule.describe(),
        "positives": "any malignant lesion (MEL, BCC, SCC, AK)",
        **{k: round(float(v), 4) for k, v in rates.items()},
        "referrals_per_1000": round(float(1000 * flagged.mean()), 1),
        **{f"{k}_ci": ci[k] for k in ("sensitivity", "specificity", "referrals_per_1000")},
    }


def fit(
    bundle: Path,
    df: pd.DataFrame,
    logits: np.ndarray,
    flag: FlagTargets,
    where: str,
    reps: int = 1000,
    prior: str = "bias",
) -> ModelCard:
    """Fit the temperature (and, with `prior="bias"`, the class offsets) on (logits, labels of df), choose the
    operating points of `flag` on the calibrated probabilities, store both in the card with the whole flag's
    figures."""
    classes = read_card(bundle).class_names
    y = df["label"].map(classes.index).to_numpy()
    t_only = cal.fit_temperature(logits, y)
    t, bias = cal.fit_temperature_and_bias(logits, y, temperature=t_only) if prior == "bias" else (t_only, None)
    before, after = cal.softmax(logits), cal.softmax(logits, t, bias)
    by_temperature = score_calibration(cal.softmax(logits, t_only), y, classes)
    corrected = score_calibration(after, y, classes) if bias is not None else by_temperature
    groups = lesion_groups(df)
    points = choose_points(
        after, y, classes, groups, flag.target_sensitivity, where, reps, flag.confidence, flag.choice
    )
    calibration = Calibration(
        temperature=t,
        class_bias=None if bias is None else [round(float(b), 6) for b in bias],
        fitted_on=where,
        n=int(len(y)),
        nll_before=cal.nll(logits, y),
        nll_after=cal.nll(logits, y, t, bias),
        ece_before=expected_calibration_error(y, before)[0],
        ece_after=expected_calibration_error(y, after)[0],
        binary={
            name: {"before": _brief(by_temperature[name]), "after": _brief(corrected.get(name))}
            for name in by_temperature
            if by_temperature[name]
        },
        shift_reference=shift_reference(df, after, y, classes),
        val_prior={c: round(float((y == i).mean()), 6) for i, c in enumerate(classes)},
        flag_on_validation=whole_flag(after, y, classes, groups, points),
    )
    card = record_calibration(bundle, calibration, points)
    c = calibration
    offsets = "" if bias is None else ", class offsets " + " ".join(f"{k} {b:+.2f}" for k, b in zip(classes, bias))
    print(
        f"[calibrate] temperature {t:.3f}{offsets} on {c.n} images ({where}): NLL {c.nll_before:.4f} -> "
        f"{c.nll_after:.4f}, ECE {c.ece_before:.4f} -> {c.ece_after:.4f}"
    )
    for name, b in (c.binary or {}).items():
        print(
            f"[calibrate] P({name}): slope {b['before']['slope']:.2f} -> {b['after']['slope']:.2f}, intercept "
            f"{b['before']['intercept']:+.2f} -> {b['after']['intercept']:+.2f}, mean score "
            f"{b['before']['mean_score']:.3f} -> {b['after']['mean_score']:.3f} "
            f"(observed {b['after']['observed_rate']:.3f})"
        )
    for name, p in points.items():
        how = f", {p.target_confidence:.0%} lower bound" if p.target_confidence else ""
        how += " not reached: too few positives" if p.bound_reached is False else ""
        joint = f"; chosen jointly: the flag's sensitivity on {name} {p.val_flag_sensitivity:.3f}"
        print(
            f"[calibrate] {name}: P({'+'.join(p.classes)}) >= {p.threshold:.4f} alone gives sensitivity "
            f"{p.val_sensitivity:.3f} (target {p.target_sensitivity:.2f}{how}), specificity {p.val_specificity:.3f}, "
            f"{p.val_referrals_per_1000:.0f} referrals per 1,000 on {where}{joint if p.chosen == 'joint' else ''}"
        )
    f = c.flag_on_validation
    if f:
        print(
            f"[calibrate] the flag as deployed (either point): sensitivity {f['sensitivity']:.3f} "
            f"({f['sensitivity_ci'][0]:.3f}-{f['sensitivity_ci'][1]:.3f}) for any malignant lesion, specificity "
            f"{f['specificity']:.3f}, {f['referrals_per_1000']:.0f} referrals per 1,000 on {where}"
        )
    return card


def shift_reference(df: pd.DataFrame, probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """What screening runs compare an archive with (`evaluation.shift`): these rows' flag scores and, where the
    frame carries them, their image statistics, overall and by true class."""
    from skinscan.evaluation import shift

    features = shift.flag_scores({f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}, len(probs))
    features.update({c: df[c].to_numpy() for c in shift.IMAGE_STATS if c in df})
    return shift.reference(features, y, classes)


def _brief(c: dict | None) -> dict | None:
    """A binary calibration without its bins (the card keeps the figures)."""
    return None if c is None else {k: round(v, 4) for k, v in c.items() if k != "reliability"}


def calibrate_frame(
    bundle: Path,
    df: pd.DataFrame,
    backend: str,
    flag: FlagTargets,
    where: str,
    reps: int = 1000,
    prior: str = "bias",
) -> ModelCard:
    """Predict the labelled rows of `df` with `backend` and `fit` on those that decode."""
    from skinscan.evaluation.classifier import predict_frame

    df, logits, _ = predict_frame(bundle, df, backend, progress=False)
    return fit(bundle, df, logits, flag, where, reps, prior)


def run(cfg: CalibrateConfig) -> ModelCard:
    from skinscan.data import storage
    from skinscan.data.splits import near_text
    from skinscan.evaluation.classifier import leakage_check, select_eval_set

    if storage.is_remote(cfg.model):
        raise ConfigError(f"{cfg.model}: calibrate a local copy of the bundle, then upload it")
    if cfg.split not in ("val", None):  # an allow-list: val, or a clinic's own set named with --data
        raise ConfigError(
            f"--split {cfg.split}: operating points are chosen on validation only (a threshold chosen on the split "
            "it is measured on reports the target, not what screening will get)"
        )
    if cfg.split is None and cfg.data is None:
        raise ConfigError(
            "--split '': that is the bundle's whole training manifest, test split included; use --split val, or "
            "--data with a clinic's own labelled set"
        )
    bundle = Path(cfg.model)
    card = read_card(bundle)
    if card.task != "classify":
        raise ConfigError(f"{bundle} is a {card.task} bundle; calibrate needs a classifier")
    data = cfg.data or str(bundle / "train_manifest.parquet")
    df = select_eval_set(bundle, data, cfg.split)
    if cfg.split is None:  # a clinic's own set: none of it may have been trained or validated on
        leak = leakage_check(bundle, df)
        if leak.get("checked") and leak["overlapping"]:
            raise DataError(
                f"{data}: {leak['overlapping']} of its images were in the model's training or validation split (same "
                "id, content, lesion or picture); remove them first (`skinscan data overlap`)"
            )
        if leak.get("checked") and leak.get("by_near_duplicate") is None:
            print(f"[calibrate] near-duplicate pictures of the training images: {near_text(None)}")
    df = df[df["label"].isin(card.class_names)].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{data}: no labelled images of the model's classes to calibrate on")
    if cfg.backend == "onnxruntime":
        from conversion.onnx_export import ensure_onnx

        ensure_onnx(bundle)
    where = f"{Path(data).name} split {cfg.split}" if cfg.split else Path(data).name
    return calibrate_frame(bundle, df, cfg.backend, cfg.flag, where, cfg.bootstrap, cfg.prior)
