"""Evaluation figures: confusion matrices (counts and row-normalised), ROC curves, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    plt = _plt()
    cm = np.asarray(cm, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, data, name, fmt in (
        (axes[0], cm, "counts", "{:.0f}"),
        (axes[1], norm, "row-normalised (recall)", "{:.2f}"),
    ):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} {name}".strip())
        hi = data.max() if data.max() > 0 else 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    fmt.format(data[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if data[i, j] > hi / 2 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: list[str], auc: dict, path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for i, c in enumerate(classes):
        pos = y_true == i
        if 0 < pos.sum() < len(pos):
            fpr, tpr, _ = roc_curve(pos, probs[:, i])
            ax.plot(fpr, tpr, label=f"{c} (AUC {auc[c]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, one vs rest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(reliability: dict, ece: float, path: Path, label: str = "") -> None:
    plt = _plt()
    n = len(reliability["count"])
    centers = (np.arange(n) + 0.5) / n
    acc = [a if a is not None else 0 for a in reliability["accuracy"]]
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    a.bar(centers, acc, width=1 / n, edgecolor="k", alpha=0.7, label="accuracy")
    a.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    a.set_ylabel("accuracy")
    a.set_title(f"Reliability{', ' + label if label else ''} (ECE {ece:.3f})")
    a.legend()
    b.bar(centers, reliability["count"], width=1 / n, edgecolor="k", color="grey")
    b.set_xlabel("top-1 confidence")
    b.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_binary_reliability(curves: dict[str, dict], path: Path, score: str) -> None:
    """Observed rate against mean score per bin for one thresholded score (P(MEL), P(malignant)), one line per
    calibration (`metrics.binary_calibration` results), with slope and intercept in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, c in curves.items():
        rel = c["reliability"]
        pts = [(x, y, n) for x, y, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n]
        label = f"{name}: slope {c['slope']:.2f}, intercept {c['intercept']:+.2f}, ECE {c['ece']:.3f}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set_xlabel(f"mean {score} in the bin")
    ax.set_ylabel("observed rate")
    ax.set_title(f"Reliability of {score}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
