"""Classification and segmentation metrics used in training and evaluation."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def classification_summary(y_true, y_pred, k: int) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall over classes present in y_true), macro F1 (over all k)."""
    cm = confusion(y_true, y_pred, k).astype(float)
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
