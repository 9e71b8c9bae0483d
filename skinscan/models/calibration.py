"""From logits to decisions: temperature scaling, the training prior undone, and operating points.

A screening programme thresholds probabilities, so they must mean what they say: temperature scaling (Guo et al.
2017) makes them as confident as they are right, and per-class offsets (bias-corrected temperature scaling,
Alexandari et al. 2020) undo the class prior the oversampler trained with, which one temperature cannot: trained on
balanced classes, P(MEL) and P(malignant) would otherwise stay inflated against the prevalence the model screens at.
Both are fitted on validation. The threshold must come from a target it can defend (the sensitivity it wants on
validation), not 0.5. Pure numpy: training, `skinscan calibrate`, evaluation and every
screening backend call the same functions, so a probability is the same wherever it is computed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skinscan.data.taxonomy import ISIC2019_CLASSES, MALIGNANT

MALIGNANT_ORDERED = [c for c in ISIC2019_CLASSES if c in MALIGNANT]
RULE_MEMBERS: dict[str, list[str]] = {"malignant": MALIGNANT_ORDERED, **{c: [c] for c in ISIC2019_CLASSES}}
"""Operating-point names -> the classes whose probabilities are summed into its score."""


def _scaled(logits: np.ndarray, temperature: float, bias=None) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    return z if bias is None else z + np.asarray(bias, np.float64)


def softmax(logits: np.ndarray, temperature: float = 1.0, bias=None) -> np.ndarray:
    """softmax(logits / temperature + bias) (`bias`: per-class offsets, or None)."""
    z = _scaled(logits, temperature, bias)
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def card_probs(card, logits: np.ndarray) -> np.ndarray:
    """The probabilities a bundle's card defines: its temperature and class offsets (every backend and evaluation
    computes them here, so a probability is the same wherever it is computed)."""
    return softmax(logits, card.temperature, card.class_bias)


def decision_scores(probs: np.ndarray, bias=None) -> np.ndarray:
    """The card's probabilities with its class offsets taken out (a uniform class prior, as trained): their argmax
    is the balanced-accuracy decision, the predicted class. The probabilities themselves carry the data's prior, so
    their argmax favours common classes; thresholds and reported probabilities use them, the predicted class not."""
    if bias is None:
        return probs
    return reweight(probs, np.exp(bias), np.ones(len(bias))).astype(np.float32)


def reweight(probs: np.ndarray, old_prior, new_prior) -> np.ndarray:
    """Posteriors under `new_prior` from posteriors under `old_prior` (Bayes: p'(y|x) ∝ p(y|x) new(y) / old(y))."""
    w = np.asarray(new_prior, np.float64) / np.maximum(np.asarray(old_prior, np.float64), 1e-12)
    q = np.asarray(probs, np.float64) * w
    return q / q.sum(1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0, bias=None) -> float:
    """Mean negative log-likelihood of the true classes."""
    z = _scaled(logits, temperature, bias)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises validation NLL of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    bounds = (math.log(0.05), math.log(20))
    res = minimize_scalar(lambda t: nll(logits, y, math.exp(t)), bounds=bounds, method="bounded")
    return float(math.exp(res.x))


def fit_temperature_and_bias(
    logits: np.ndarray, y: np.ndarray, l2: float = 1e-3, temperature: float | None = None
) -> tuple[float, np.ndarray]:
    """(T, b): the temperature and per-class offsets (mean 0) minimising validation NLL of softmax(logits / T + b),
    with a small L2 penalty on b so a class absent from validation gets a finite offset. The offsets move P(class)
    towards the validation split's class frequencies (the data's prior, not the oversampler's); argmax can change.
    `temperature`: the temperature-only fit, where the caller has it (the search starts there)."""
    from scipy.optimize import minimize

    k = np.asarray(logits).shape[1]

    def loss(p: np.ndarray) -> float:
        return nll(logits, y, math.exp(p[0]), p[1:]) + l2 * float(np.sum(p[1:] ** 2))

    start = np.concatenate([[math.log(temperature or fit_temperature(logits, y))], np.zeros(k)])
    res = minimize(loss, start, method="L-BFGS-B", bounds=[(math.log(0.05), math.log(20))] + [(-10, 10)] * k)
    b = res.x[1:] - res.x[1:].mean()
    return float(math.exp(res.x[0])), b


def rule_scores(probs: np.ndarray, classes: list[str], members: list[str]) -> np.ndarray:
    """Score of an operating point: the summed probability of its member classes the model has."""
    idx = [classes.index(c) for c in members if c in classes]
    return probs[:, idx].sum(1) if idx else np.zeros(len(probs), np.float32)


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> tuple[float, float, float]:
    """(threshold, sensitivity, specificity): the highest threshold whose sensitivity (scores >= threshold among
    positives) reaches `target`, i.e. the most specific rule that meets it."""
    pos = np.sort(np.asarray(scores)[positive])[::-1]
    neg = np.asarray(scores)[~positive]
    if not len(pos):
        raise ValueError("no positives to choose a threshold on")
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    t = float(pos[k - 1])
    return t, float((pos >= t).mean()), float((neg < t).mean()) if len(neg) else float("nan")


@dataclass(frozen=True)
class FlagRule:
    """Flag an image when any operating point's score reaches its threshold.

    points: name -> (member classes, threshold); source: where the thresholds came from (`card`, `config`,
    `default`). Rows record the points that fired (`describe(fired)`), or the whole rule when none did."""

    points: dict[str, tuple[tuple[str, ...], float]]
    source: str

    def describe(self, names: list[str] | None = None) -> str:
        names = list(self.points) if names is None else names
        parts = [f"P({'+'.join(self.points[n][0])}) >= {self.points[n][1]:.4g}" for n in names]
        return " or ".join(parts) + f" [{self.source}]"

    def fired(self, probs: np.ndarray, classes: list[str]) -> np.ndarray:
        """[n, points] whether each point's score reaches its threshold (False for a point the model lacks)."""
        out = np.zeros((len(probs), len(self.points)), bool)
        for j, (members, t) in enumerate(self.points.values()):
            if any(c in classes for c in members):
                out[:, j] = rule_scores(probs, classes, list(members)) >= t
        return out

    def apply(self, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
        """(flagged [n], per-row rule text: the points that fired, else the whole rule)."""
        fired = self.fired(probs, classes)
        names = list(self.points)
        texts: dict[tuple, str] = {}  # one description per combination of points, not per row
        for f in map(tuple, fired):
            if f not in texts:
                texts[f] = self.describe([n for n, on in zip(names, f) if on]) if any(f) else self.describe()
        return fired.any(1), [texts[tuple(f)] for f in fired]


def fixed_rule(classes: list[str], threshold: float, source: str) -> FlagRule:
    """The version-one rule: any of `classes` has probability >= threshold."""
    return FlagRule({c: ((c,), float(threshold)) for c in classes}, source)


def points_rule(points: dict, source: str = "card") -> FlagRule:
    """The rule of operating points (name -> an `OperatingPoint`: its classes and threshold)."""
    return FlagRule({n: (tuple(p.classes), p.threshold) for n, p in points.items()}, source)


def card_rule(card, fixed_classes: list[str] | None = None) -> FlagRule:
    """The bundle's operating points; without any, the version-one rule at 0.5 (said in the rule's source)."""
    if card.operating_points:
        return points_rule(card.operating_points)
    classes = fixed_classes or MALIGNANT_ORDERED
    return fixed_rule([c for c in classes if c in card.class_names] or classes, 0.5, "default 0.5: no card points")


def screening_rule(card, threshold: float | None, classes: list[str]) -> FlagRule:
    """What the screening job flags with: a configured fixed threshold overrides the card's operating points."""
    return fixed_rule(classes, threshold, "config") if threshold is not None else card_rule(card, classes)
