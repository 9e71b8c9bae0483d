"""How common each class is in an unlabelled archive, from the calibrated posteriors alone (Saerens, Latinne and
Decaestecker 2002): EM alternates re-weighting every posterior by the ratio of the current prior estimate to the
validation prior, and re-estimating the prior as the mean re-weighted posterior. The estimate is as good as the
posteriors' calibration on the validation split (prior shift, not a changed look of the images: `evaluation.shift`
says when that assumption fails). Pure numpy."""

from __future__ import annotations

import numpy as np

from skinscan.models.calibration import reweight


def em_priors(probs: np.ndarray, val_prior, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """The class prior of the rows of `probs` (posteriors calibrated to `val_prior`) by EM."""
    prior = np.asarray(val_prior, np.float64)
    for _ in range(iters):
        new = reweight(probs, val_prior, prior).mean(0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior
