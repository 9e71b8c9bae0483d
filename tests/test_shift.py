"""Shift detection: an archive compared with the validation split its operating point was chosen on."""

from __future__ import annotations

import numpy as np

from skinscan.evaluation import shift


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    ref = shift.reference({"P(MEL)": rng.beta(1, 6, 2000), "img_mean_r": rng.normal(180, 15, 2000)})
    same = shift.compare(ref, {"P(MEL)": rng.beta(1, 6, 3000), "img_mean_r": rng.normal(180, 15, 3000)})
    assert not same["shifted"] and max(same["psi"].values()) < 0.05 and same["message"] is None
    # few rows: the PSI two samples show by chance is taken off, so 150 rows of the same images raise nothing
    small = shift.compare(ref, {"P(MEL)": rng.beta(1, 6, 150), "img_mean_r": rng.normal(180, 15, 150)})
    assert not small["shifted"] and small["psi"]["img_mean_r"] < 0.1
    # images: a colour cast is a shift; scores alone (another case mix) are reported, not a shift
    cast = shift.compare(ref, {"P(MEL)": rng.beta(1, 6, 3000), "img_mean_r": rng.normal(150, 15, 3000)})
    assert cast["shifted"] and cast["worst"] == "img_mean_r" and cast["psi"]["img_mean_r"] > shift.MAJOR_PSI
    assert "--split ''" in cast["message"] and "img_mean_r" in shift.describe(cast)
    mix = shift.compare(ref, {"P(MEL)": rng.beta(3, 3, 3000), "img_mean_r": rng.normal(180, 15, 3000)})
    assert not mix["shifted"] and mix["psi"]["P(MEL)"] > shift.MAJOR_PSI
    # rows without a feature (parts written before image statistics existed) leave it out, not fail
    partial = shift.compare(ref, {"P(MEL)": rng.beta(1, 6, 300), "img_mean_r": np.full(300, np.nan)})
    assert set(partial["psi"]) == {"P(MEL)"} and not partial["shifted"]
    assert "not compared" in shift.describe(None) and "fewer than" in shift.describe(shift.compare(ref, {}))


def test_a_case_mix_that_explains_the_scores_is_taken_out_by_the_archive_prior():
    """Validation: 80% benign (low scores), 20% melanoma (high). An archive of the same images with 60% melanoma
    moves the score distribution; re-mixing validation by class to the archive's prior explains it."""
    rng = np.random.default_rng(2)
    y = (rng.random(3000) < 0.2).astype(int)
    score = np.where(y == 1, rng.beta(6, 2, 3000), rng.beta(1, 8, 3000))
    ref = shift.reference({"P(MEL)": score}, y, ["NV", "MEL"])
    ya = (rng.random(3000) < 0.6).astype(int)
    archive = {"P(MEL)": np.where(ya == 1, rng.beta(6, 2, 3000), rng.beta(1, 8, 3000))}
    plain = shift.compare(ref, archive)["psi"]["P(MEL)"]
    mixed = shift.compare(ref, archive, {"NV": 0.4, "MEL": 0.6})["psi"]["P(MEL)"]
    assert plain > 0.5 and mixed < 0.05


def test_flag_scores_and_image_statistics():
    probs = {"prob_MEL": np.array([0.2, np.nan]), "prob_BCC": np.array([0.1, 0.3]), "prob_NV": np.array([0.7, 0.7])}
    s = shift.flag_scores(probs, 2)
    assert np.allclose(s["P(MEL)"], [0.2, 0.0]) and np.allclose(s["P(malignant)"], [0.3, 0.3])
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :, :, 0] = 200
    img[0, :2, :, 1] = 100
    st = shift.image_stats(img)[0]
    assert np.allclose(st[:3], [200, 50, 0]) and st[3] > 0


def test_a_sample_of_parts_holds_about_the_rows_asked_for():
    parts = [f"p{i}" for i in range(1000)]
    assert len(shift.sample_parts(parts, 256, rows=20_000)) == 79
    assert shift.sample_parts(parts[:10], 256) == parts[:10]
    assert shift.sample_parts(parts, 256) == shift.sample_parts(parts, 256)  # the same sample every time


def test_em_recovers_an_archive_prior_from_calibrated_posteriors():
    """Posteriors calibrated where classes were 50/30/20; an archive where they are 10/30/60: EM finds the archive's
    prior without labels, and the re-weighted posteriors are calibrated there."""
    from skinscan.evaluation.priors import em_priors, reweight

    rng = np.random.default_rng(0)
    centers = np.eye(3) * 1.5
    val_prior, archive_prior = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6])
    y = rng.choice(3, size=20000, p=archive_prior)
    x = centers[y] + rng.normal(size=(20000, 3))
    loglik = -0.5 * ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    post = np.exp(loglik) * val_prior
    post /= post.sum(1, keepdims=True)  # what a model calibrated on validation reports in the archive
    assert abs(post.mean(0)[0] - 0.1) > 0.1  # the plain mean posterior is off
    est = em_priors(post, val_prior)
    assert np.allclose(est, archive_prior, atol=0.02)
    adapted = reweight(post, val_prior, est)
    assert abs(adapted[:, 2].mean() - (y == 2).mean()) < 0.02
