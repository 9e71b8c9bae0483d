"""The one metrics module: classification (report, balanced accuracy, the ISIC metric, AUCs, melanoma sensitivity
at fixed specificity, calibration), the compact summary training validates on, screening rates at an operating
point, bootstrap intervals resampled by lesion, and segmentation (Dice, Jaccard). Values follow scikit-learn's
definitions; the weighted forms take a bootstrap draw as per-row weights (a lesion drawn twice weighs 2)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Per-class precision/recall/F1/support, accuracy, macro and weighted averages (sklearn semantics)."""
    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }
    present = labels[(s > 0) | np.isin(labels, y_pred)]
    out = {"per_class": per_class, "accuracy": float((y_true == y_pred).mean())}
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg, zero_division=0)
        out[f"{avg}_avg"] = {"precision": float(pa), "recall": float(ra), "f1": float(fa), "support": int(len(y_true))}
    return out


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (= sklearn.metrics.balanced_accuracy_score)."""
    classes = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


def isic_balanced_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The ISIC challenge metric as the official scorer computes it from CSV files that carry only the
    categories present in the truth: prediction = argmax over those categories."""
    present = np.unique(y_true)
    pred = present[np.argmax(probs[:, present], axis=1)]
    return balanced_accuracy(y_true, pred)


def one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for i, c in enumerate(classes):
        pos = y_true == i
        out[c] = float(roc_auc_score(pos, probs[:, i])) if 0 < pos.sum() < len(pos) else None
    return out


def sensitivity_at_specificity(y_true_bin: np.ndarray, scores: np.ndarray, specificity: float) -> float | None:
    """Highest sensitivity reachable with specificity >= the target (a threshold on the ROC curve)."""
    if y_true_bin.all() or not y_true_bin.any():
        return None
    fpr, tpr, _ = roc_curve(y_true_bin, scores)
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _reliability(score: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[float, dict]:
    """ECE of `score` against the 0/1 outcomes `hit`, equal-width bins; the reliability-diagram data."""
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(score, edges[1:-1], right=True), 0, n_bins - 1)
    ece, bins = 0.0, {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(hit[m].mean() - score[m].mean())
        bins["confidence"].append(float(score[m].mean()) if m.any() else None)
        bins["accuracy"].append(float(hit[m].mean()) if m.any() else None)
        bins["count"].append(int(m.sum()))
    return float(ece), bins


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> tuple[float, dict]:
    """ECE on top-1 confidence with equal-width bins; also the reliability-diagram data."""
    return _reliability(probs.max(1), (probs.argmax(1) == y_true).astype(float), n_bins)


def binary_calibration(scores: np.ndarray, positive: np.ndarray, n_bins: int = 10) -> dict | None:
    """How well a thresholded score (P(MEL), P(malignant)) means what it says: calibration slope (logistic
    regression of the outcome on logit(score); 1 is ideal, below 1 over-confident), calibration intercept
    (calibration-in-the-large, the slope held at 1; 0 is ideal, below 0 the score over-states the rate), mean score
    against observed rate, Brier score, binary ECE and the reliability bins. None without both outcomes."""
    from scipy.optimize import brentq
    from sklearn.linear_model import LogisticRegression

    p = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    y = np.asarray(positive, bool)
    if y.all() or not y.any():
        return None
    x = np.log(p / (1 - p))
    slope = float(LogisticRegression(C=np.inf).fit(x[:, None], y).coef_[0, 0])

    def mean_gap(a: float) -> float:
        return float(np.mean(1 / (1 + np.exp(-(a + x)))) - y.mean())

    intercept = float(brentq(mean_gap, -30, 30))
    ece, bins = _reliability(p, y.astype(float), n_bins)
    return {
        "slope": slope,
        "intercept": intercept,
        "mean_score": float(p.mean()),
        "observed_rate": float(y.mean()),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": ece,
        "reliability": bins,
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    cm = np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), weights=weights, minlength=k * k).reshape(k, k)
    return cm if weights is not None else cm.astype(np.int64)


def classification_summary(y_true, y_pred, k: int, weights: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall over classes present in y_true), macro F1 (over the classes
    present or predicted): what training validates on every epoch, without scikit-learn's overhead."""
    cm = confusion_matrix(y_true, y_pred, k, weights).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(1.0, cm.sum())),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present | (predicted > 0)].mean()) if (present | (predicted > 0)).any() else 0.0,
    }


def screening_rates(flagged: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """Sensitivity, specificity, PPV and referrals per 1,000 screened of a flag against a binary truth."""
    w = np.ones(len(flagged)) if weights is None else weights
    f, p = np.asarray(flagged, bool), np.asarray(positive, bool)
    wp, wn, wf = (w * p).sum(), (w * ~p).sum(), (w * f).sum()
    tp, tn = (w * (f & p)).sum(), (w * (~f & ~p)).sum()
    nan = float("nan")
    return {
        "sensitivity": tp / wp if wp else nan,
        "specificity": tn / wn if wn else nan,
        "ppv": tp / wf if wf else nan,
        "referrals_per_1000": 1000 * wf / w.sum() if w.sum() else nan,
    }


def wilson_interval(successes: float, n: float, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a proportion: it stays inside [0, 1] and does not collapse to a point at 0 or 1
    (a percentile bootstrap of 20 of 20 positives found says "1.000 (1.000-1.000)")."""
    from scipy.stats import norm

    if n <= 0:
        return None
    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def clustered_rate_intervals(flagged, positive, groups, level: float = 0.95) -> dict[str, list[float] | None]:
    """Wilson intervals of `screening_rates`, with each denominator counted in lesions, not images: images of one
    lesion are not independent evidence, so n is the number of distinct lesions among the positives (sensitivity),
    the negatives (specificity), the flagged (PPV) or all (referrals, per 1,000), and the successes are the rate
    times that n (a clustered equivalent of the plain Wilson interval)."""
    f, p, g = np.asarray(flagged, bool), np.asarray(positive, bool), np.asarray(groups, dtype=str)
    rates = screening_rates(f, p)

    def lesions(mask) -> int:
        return len(np.unique(g[mask]))

    out = {}
    for name, denominator in (("sensitivity", p), ("specificity", ~p), ("ppv", f), ("referrals_per_1000", None)):
        n = lesions(denominator) if denominator is not None else lesions(np.ones(len(f), bool))
        rate = rates[name] / (1000 if name == "referrals_per_1000" else 1)
        ci = wilson_interval(rate * n, n, level) if n and np.isfinite(rate) else None
        out[name] = [c * 1000 for c in ci] if ci and name == "referrals_per_1000" else ci
    return out


def weighted_auc(positive: np.ndarray, scores: np.ndarray):
    """A function of per-row weights -> ROC AUC (ties count half); sorts once, so a bootstrap costs O(n) per
    draw. None where a draw has no positives or no negatives. Unweighted, equals sklearn's roc_auc_score."""
    order = np.argsort(scores, kind="mergesort")
    s, p = np.asarray(scores)[order], np.asarray(positive, bool)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]

    def auc(weights: np.ndarray | None = None) -> float | None:
        w = np.ones(len(s)) if weights is None else np.asarray(weights, float)[order]
        wp, wn = np.add.reduceat(w * p, starts), np.add.reduceat(w * ~p, starts)
        den = wp.sum() * wn.sum()
        return float((wp * (np.cumsum(wn) - 0.5 * wn)).sum() / den) if den > 0 else None

    return auc


def lesion_bootstrap_weights(groups, reps: int = 1000, seed: int = 0):
    """Per-row weights of `reps` bootstrap draws that resample groups (lesions) with replacement: every image of
    a drawn lesion comes along, so correlated images of one lesion do not count as independent evidence."""
    _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    g = int(inverse.max()) + 1 if len(inverse) else 0
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        yield np.bincount(rng.integers(0, g, g), minlength=g)[inverse].astype(float)


def bootstrap_ci(stat, groups, reps: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals of each figure of `stat(weights) -> {name: value}` over lesion-bootstrap draws (all
    figures from the same draws). Draws where a figure is undefined (None or NaN: e.g. no positive drawn) are
    dropped for it; a figure undefined in most draws gets None."""
    if reps <= 0:
        return dict.fromkeys(stat(None))
    draws: dict[str, list[float]] = {}
    for w in lesion_bootstrap_weights(groups, reps, seed):
        for k, v in stat(w).items():
            if v is not None and np.isfinite(v):
                draws.setdefault(k, []).append(float(v))
    a = (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for k in stat(None):
        v = np.array(draws.get(k, []))
        out[k] = [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))] if len(v) >= reps / 2 else None
    return out


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean per-image Dice and Jaccard of boolean masks [N, H, W] (empty-vs-empty counts as 1)."""
    pred = pred.reshape(len(pred), -1).astype(bool)
    truth = truth.reshape(len(truth), -1).astype(bool)
    inter = (pred & truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    union = (pred | truth).sum(1)
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(dice.mean()), float(iou.mean())


def evaluate_probs(y_true: np.ndarray, probs: np.ndarray, classes: list[str], decide: np.ndarray | None = None) -> dict:
    """Every metric of the evaluation report, from true class indices and predicted probabilities; `decide`: the
    scores whose argmax is the predicted class (`calibration.decision_scores`; default the probabilities)."""
    decide = probs if decide is None else decide
    y_pred = decide.argmax(1)
    report = classification_report(y_true, y_pred, classes)
    ece, reliability = expected_calibration_error(y_true, probs)
    out = {
        "n": int(len(y_true)),
        **report,
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "isic_balanced_accuracy": isic_balanced_accuracy(y_true, decide),
        "auc": one_vs_rest_auc(y_true, probs, classes),
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(classes)).tolist(),
        "ece": ece,
        "reliability": reliability,
    }
    if "MEL" in classes:
        mel = y_true == classes.index("MEL")
        scores = probs[:, classes.index("MEL")]
        out["melanoma_sensitivity_at_specificity"] = {
            "0.80": sensitivity_at_specificity(mel, scores, 0.80),
            "0.90": sensitivity_at_specificity(mel, scores, 0.90),
        }
    return out
