"""Calibration, operating points chosen on validation only, intervals resampled by lesion, and a screening flag
that follows the model card."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from skinscan.evaluation.metrics import bootstrap_ci, screening_rates, weighted_auc
from skinscan.models import calibration as cal


def _overconfident(n=2000, k=4, sharpen=4.0, seed=0):
    """Labels drawn from softmax(z); the model reports sharpen * z: right ranking, far too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.5
    p = cal.softmax(z)
    y = np.array([rng.choice(k, p=row / row.sum()) for row in p])
    return sharpen * z, y


def test_temperature_scaling_lowers_nll_and_keeps_argmax():
    logits, y = _overconfident()
    t = cal.fit_temperature(logits, y)
    assert 3.0 < t < 5.5  # it finds the sharpening
    assert cal.nll(logits, y, t) < cal.nll(logits, y) - 0.1
    assert (cal.softmax(logits, t).argmax(1) == cal.softmax(logits).argmax(1)).all()


def test_class_offsets_undo_a_balanced_training_prior_where_a_temperature_cannot():
    """A model trained on balanced classes reports p(x|y) with a uniform prior; the data's prior is 80/10/10. The
    temperature alone leaves P(minority) inflated (calibration intercept well below 0); the offsets give the
    prevalence back (mean score = observed rate, intercept ~0, slope ~1) and lower the NLL."""
    from skinscan.evaluation.metrics import binary_calibration

    rng = np.random.default_rng(0)
    prior = np.array([0.8, 0.1, 0.1])
    y = rng.choice(3, size=6000, p=prior)
    centers = np.eye(3) * 2.0
    x = centers[y] + rng.normal(size=(6000, 3))
    balanced = -0.5 * ((x[:, None, :] - centers[None]) ** 2).sum(-1)  # log p(x|y): the balanced model's logits
    t = cal.fit_temperature(balanced, y)
    tb, bias = cal.fit_temperature_and_bias(balanced, y)
    assert abs(bias.sum()) < 1e-6 and np.allclose(bias, np.log(prior) - np.log(prior).mean(), atol=0.2)  # the prior
    assert cal.nll(balanced, y, tb, bias) < cal.nll(balanced, y, t) - 0.05
    minority = y == 1
    before = binary_calibration(cal.softmax(balanced, t)[:, 1], minority)
    after = binary_calibration(cal.softmax(balanced, tb, bias)[:, 1], minority)
    assert before["mean_score"] > 1.4 * before["observed_rate"] and before["intercept"] < -1.0
    assert abs(after["mean_score"] - after["observed_rate"]) < 0.01 and abs(after["intercept"]) < 0.15
    assert 0.85 < after["slope"] < 1.15


def test_binary_calibration_reads_slope_and_intercept():
    from skinscan.evaluation.metrics import binary_calibration

    rng = np.random.default_rng(1)
    z = rng.normal(size=20000)
    outcome = rng.random(20000) < 1 / (1 + np.exp(-z))
    right = binary_calibration(1 / (1 + np.exp(-z)), outcome)
    too_sure = binary_calibration(1 / (1 + np.exp(-(2 * z + 1))), outcome)  # twice as sure, and too high
    assert abs(right["slope"] - 1) < 0.05 and abs(right["intercept"]) < 0.05 and right["ece"] < 0.02
    assert abs(too_sure["slope"] - 0.5) < 0.05 and too_sure["intercept"] < -0.5
    assert binary_calibration(np.full(5, 0.3), np.zeros(5, bool)) is None  # one outcome only: nothing to fit


def test_threshold_is_the_most_specific_reaching_the_target():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    positive = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 0], bool)
    t, sens, spec = cal.threshold_for_sensitivity(scores, positive, 0.8)  # 4 of 5 positives
    assert t == 0.4 and sens == 0.8 and spec == pytest.approx(3 / 5)
    assert cal.threshold_for_sensitivity(scores, positive, 1.0)[0] == 0.1


def test_weighted_auc_equals_sklearn_and_repeated_rows():
    rng = np.random.default_rng(0)
    pos = rng.random(300) < 0.2
    s = np.round(rng.random(300) + pos * 0.3, 2)  # ties included
    assert weighted_auc(pos, s)() == pytest.approx(roc_auc_score(pos, s), abs=1e-12)
    w = rng.integers(0, 4, 300).astype(float)
    rep = np.repeat(np.arange(300), w.astype(int))
    assert weighted_auc(pos, s)(w) == pytest.approx(roc_auc_score(pos[rep], s[rep]), abs=1e-12)


def test_bootstrap_resamples_lesions_not_images():
    """The same rows: five images per lesion give a wider interval than unique lesions (honest: the five images of
    one lesion are one piece of evidence)."""
    rng = np.random.default_rng(1)
    lesions = 60
    pos = np.repeat(rng.random(lesions) < 0.5, 5)
    flagged = np.repeat(rng.random(lesions) < 0.7, 5) & pos | np.repeat(rng.random(lesions) < 0.2, 5) & ~pos
    grouped = np.repeat(np.arange(lesions), 5)
    unique = np.arange(len(pos))

    def stat(w):
        return {"sens": screening_rates(flagged, pos, w)["sensitivity"]}

    g = bootstrap_ci(stat, grouped, reps=800)["sens"]
    u = bootstrap_ci(stat, unique, reps=800)["sens"]
    assert g[0] <= stat(None)["sens"] <= g[1]
    assert (g[1] - g[0]) > 1.6 * (u[1] - u[0])  # ~sqrt(5) wider


def _labelled_images(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    from skinscan.data.synth import render

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["MEL", "NV", "BCC", "BKL"][i % 4]
        path = root / f"img_{i:04d}.jpg"
        Image.fromarray(render(label, 64, rng)[0]).save(path)
        rows.append(
            {
                "image_id": path.stem,
                "uri": str(path),
                "label": label,
                "lesion_id": f"L{i // 2}",
                "split": "val" if i < n // 2 else "test",
                "age": 30 + 10 * (i % 5),
                "sex": ["male", "female"][i % 2],
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def overconfident_bundle(tmp_path_factory, tiny_bundles):
    """The tiny random-init Swin with its head scaled by 30: deliberately over-confident."""
    from safetensors.torch import load_file, save_file

    from skinscan.models.bundle import _write_card as write_card
    from skinscan.models.bundle import file_sha256, read_card

    root = tmp_path_factory.mktemp("cal")
    bundle = root / "swin"
    shutil.copytree(tiny_bundles["swin"], bundle)
    state = load_file(str(bundle / "model.safetensors"))
    for k in state:
        if k.startswith("head"):
            state[k] = state[k] * 30
    save_file(state, str(bundle / "model.safetensors"))
    card = read_card(bundle)
    card.exports.clear()
    write_card(bundle, card.model_copy(update={"weights_sha256": file_sha256(bundle / "model.safetensors")}))
    data = _labelled_images(root / "images", 96)
    data.to_parquet(root / "manifest.parquet")
    return bundle, root / "manifest.parquet"


def _calibrate(bundle: Path, manifest: Path, split: str = "val"):
    from skinscan.config import CalibrateConfig
    from skinscan.evaluation.calibrate import run

    return run(CalibrateConfig(model=str(bundle), data=str(manifest), split=split, bootstrap=200))


def test_calibrate_fits_temperature_and_points_on_validation_only(overconfident_bundle, tmp_path):
    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    card = _calibrate(a, manifest)
    assert card.calibration.temperature > 1.5  # over-confident: it softens
    assert card.calibration.nll_after < card.calibration.nll_before
    assert set(card.operating_points) == {"MEL", "malignant"}
    for p in card.operating_points.values():  # chosen jointly: the flag as deployed reaches each target
        assert p.val_flag_sensitivity >= p.target_sensitivity and p.chosen_on.endswith("split val")
    # shuffled test labels (and test images' metadata) change nothing: the points come from validation alone
    df = pd.read_parquet(manifest)
    test = df["split"] == "test"
    df.loc[test, "label"] = df.loc[test, "label"].sample(frac=1, random_state=3).to_numpy()
    shuffled = tmp_path / "shuffled.parquet"
    df.to_parquet(shuffled)
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    again = _calibrate(b, shuffled)
    assert {k: v.threshold for k, v in again.operating_points.items()} == {
        k: v.threshold for k, v in card.operating_points.items()
    }
    assert again.calibration.temperature == card.calibration.temperature
    # the card's probabilities carry the offsets (mean 0), and the thresholded scores' calibration before/after
    assert card.class_bias is not None and abs(sum(card.class_bias)) < 1e-4
    assert set(card.calibration.binary) == {"MEL", "malignant"}
    assert {"slope", "intercept", "mean_score"} <= set(card.calibration.binary["MEL"]["after"])
    logits = np.random.default_rng(0).normal(size=(3, len(card.class_names)))
    assert np.allclose(cal.card_probs(card, logits), cal.softmax(logits, card.temperature, card.class_bias))
    c = tmp_path / "c"  # the temperature alone, as before
    shutil.copytree(bundle, c)
    from skinscan.config import CalibrateConfig
    from skinscan.evaluation.calibrate import run

    alone = run(CalibrateConfig(model=str(c), data=str(manifest), split="val", bootstrap=0, prior="none"))
    assert (
        alone.class_bias is None
        and alone.calibration.binary["MEL"]["before"] == alone.calibration.binary["MEL"]["after"]
    )


def test_calibrate_refuses_the_test_split_in_one_line(overconfident_bundle, tmp_path):
    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinscan.cli",
            "calibrate",
            "--model",
            str(a),
            "--data",
            str(manifest),
            "--split",
            "test",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "validation only" in r.stderr


def test_evaluate_reports_the_operating_point_with_intervals_and_subgroups(overconfident_bundle, tmp_path):
    from skinscan.evaluation.classifier import evaluate

    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    card = _calibrate(a, manifest)
    r = evaluate(a, str(manifest), tmp_path / "ev", split="test", backend="torch", progress=False, bootstrap=200)
    op = r["operating_point"]
    assert op["rule"].endswith("[card]") and set(op["points"]) == {"MEL", "malignant", "flag", "flag:MEL"}
    # the flag fires when either point does: on melanomas it is at least as sensitive as the MEL point alone
    assert op["points"]["flag:MEL"]["sensitivity"]["value"] >= op["points"]["MEL"]["sensitivity"]["value"]
    assert op["points"]["flag:MEL"]["positives"] == op["points"]["MEL"]["positives"]
    for p in op["points"].values():
        lo, hi = p["sensitivity"]["ci"]
        assert lo <= p["sensitivity"]["value"] <= hi
    assert r["calibration"]["temperature"] == card.calibration.temperature
    assert {row["attribute"] for row in r["subgroups"]} == {"age", "sex"}
    small = [row["small"] for row in r["subgroups"]]
    assert small == [min(row["flag"]["positives"], row["flag"]["negatives"]) < 20 for row in r["subgroups"]]
    assert any(row["flag"]["positives"] >= 20 and row["small"] for row in r["subgroups"])  # marked by negatives
    assert sum(row["n"] for row in r["subgroups"] if row["attribute"] == "sex") == r["n_images"]
    md = (tmp_path / "ev" / "evaluation.md").read_text()
    assert md.index("## Operating point") < md.index("## All figures")
    assert "referrals per 1,000" in md and "Skin type" in md
    assert (tmp_path / "ev" / "reliability_uncalibrated.png").stat().st_size > 0


def test_screening_flag_follows_the_card(overconfident_bundle, tmp_path):
    from skinscan.models.bundle import Calibration, OperatingPoint, record_calibration
    from skinscan.screening.stages import ClassifyStage, decode_batch

    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    uris = pd.read_parquet(manifest)["uri"].tolist()[:24]
    batch = decode_batch({"uri": np.array(uris, object), "image_id": np.array(uris, object)}, 64, 0, 10**8)
    kw = {"backend": "torch", "explain": "none", "threads": 1, "thumbnails": "none"}
    base = ClassifyStage(str(a), **kw)({k: v.copy() for k, v in batch.items()})
    t = float(np.median(base["prob_MEL"]))
    point = OperatingPoint(
        classes=["MEL"],
        threshold=t,
        target_sensitivity=0.9,
        chosen_on="test",
        val_sensitivity=0.9,
        val_specificity=0.5,
        val_positives=10,
        val_negatives=10,
        val_referrals_per_1000=500,
    )
    none = Calibration(temperature=1.0, fitted_on="-", n=0, nll_before=0, nll_after=0, ece_before=0, ece_after=0)
    record_calibration(a, none, {"MEL": point})
    out = ClassifyStage(str(a), **kw)({k: v.copy() for k, v in batch.items()})
    expect = out["prob_MEL"] >= t
    assert 0 < expect.sum() < len(expect)
    assert (out["flagged"] == expect).all()
    assert all(r == f"P(MEL) >= {t:.4g} [card]" for r in out["flag_rule"])
    # a configured threshold overrides the card, and says so
    fixed = ClassifyStage(str(a), threshold=1.0, **kw)({k: v.copy() for k, v in batch.items()})
    assert not fixed["flagged"].any() and fixed["flag_rule"][0].endswith("[config]")


def test_evaluate_reports_each_source_and_each_external_set(overconfident_bundle, tmp_path):
    from skinscan.config import EvaluateConfig
    from skinscan.evaluation.run import run

    bundle, manifest = overconfident_bundle
    df = pd.read_parquet(manifest)
    df["source"] = np.where(np.arange(len(df)) % 2, "clinic_a", "clinic_b")
    two = tmp_path / "two.parquet"
    df.to_parquet(two)
    external = tmp_path / "external.csv"
    df[df["split"] == "val"].drop(columns=["split"]).to_csv(external, index=False)
    r = run(
        EvaluateConfig(
            model=str(bundle),
            data=str(two),
            split="test",
            backend="torch",
            bootstrap=100,
            output=str(tmp_path / "ev"),
            external={"other_clinic": str(external)},
        )
    )
    assert set(r["by_source"]) == {"clinic_a", "clinic_b", "pooled"}
    assert r["by_source"]["clinic_a"]["n"] + r["by_source"]["clinic_b"]["n"] == r["by_source"]["pooled"]["n"]
    assert list(r["external"]) == ["test of two.parquet", "other_clinic (external)"]
    assert r["external"]["other_clinic (external)"]["n"] == 48
    md = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "## By source" in md and "## External data sets" in md and "other_clinic (external)" in md
    assert (tmp_path / "ev" / "external-other_clinic" / "evaluation.json").exists()


def test_calibrate_splits_are_an_allow_list_and_a_clinic_set_is_checked_for_leakage(overconfident_bundle, tmp_path):
    """--split '' once meant the whole training manifest, test included; a clinic's own set must share no image,
    content or lesion with what the model trained or validated on."""
    from skinscan.config import CalibrateConfig
    from skinscan.errors import ConfigError, DataError
    from skinscan.evaluation.calibrate import run

    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    pd.read_parquet(manifest).to_parquet(a / "train_manifest.parquet")  # trained on this very table
    with pytest.raises(ConfigError, match="whole training manifest, test split included"):
        run(CalibrateConfig(model=str(a), split=None))
    with pytest.raises(ConfigError, match="validation only"):
        run(CalibrateConfig(model=str(a), data=str(manifest), split="holdout"))
    with pytest.raises(DataError, match="were in the model's training or validation split"):
        run(CalibrateConfig(model=str(a), data=str(manifest), split=None))


def test_proportion_intervals_do_not_collapse_at_0_and_1_and_count_lesions():
    """Wilson intervals on lesion counts: 20 of 20 positives found is not "1.000 (1.000-1.000)"; two images of one
    lesion are one piece of evidence, not two."""
    from skinscan.evaluation.metrics import clustered_rate_intervals, wilson_interval

    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.85  # the textbook Wilson bound for 20/20
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.29
    flagged = np.array([True] * 20 + [False] * 20)
    positive = np.array([True] * 20 + [False] * 20)
    each = clustered_rate_intervals(flagged, positive, [f"L{i}" for i in range(40)])
    pairs = clustered_rate_intervals(flagged, positive, [f"L{i // 2}" for i in range(40)])  # two images a lesion
    assert each["sensitivity"][0] < 1.0 and each["specificity"][1] == 1.0
    assert pairs["sensitivity"][0] < each["sensitivity"][0]  # half the evidence: a wider interval
    assert each["referrals_per_1000"][0] < 500 < each["referrals_per_1000"][1]


def test_screening_says_when_an_archive_is_not_like_validation(overconfident_bundle, tmp_path):
    """Calibration records the validation split's reference; rows screened from images like it are compared quietly,
    rows from a camera with a strong colour cast are flagged as shifted, and the report says so first."""
    from skinscan.screening.report import write_report
    from skinscan.screening.shiftcheck import archive_shift
    from skinscan.screening.stages import ClassifyStage, decode_batch
    from skinscan.screening.writer import write_batch

    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    card = _calibrate(a, manifest)
    ref = card.calibration.shift_reference
    assert set(ref) == {"P(MEL)", "P(malignant)", "img_mean_r", "img_mean_g", "img_mean_b", "img_luma_std"}
    uris = _labelled_images(tmp_path / "more", 160, seed=7)["uri"].tolist()  # more images of the same kind
    cast = tmp_path / "cast"
    cast.mkdir()
    for u in uris:  # another clinic's camera: a blue cast and less contrast
        x = np.asarray(Image.open(u).convert("RGB"), np.float32)
        y = np.clip(0.6 * x + np.float32([0, 20, 90]), 0, 255).astype(np.uint8)
        Image.fromarray(y).save(cast / Path(u).name)
    kw = {"backend": "torch", "explain": "none", "threads": 1, "thumbnails": "none"}
    stage = ClassifyStage(str(a), **kw)
    verdicts = {}
    for name, paths in {"like": uris, "cast": [str(cast / Path(u).name) for u in uris]}.items():
        out = str(tmp_path / name)
        for i in range(0, len(paths), 64):
            chunk = np.array(paths[i : i + 64], object)
            write_batch(stage(decode_batch({"uri": chunk, "image_id": chunk}, 64, 0, 10**8)), out)
        verdicts[name] = archive_shift(out, card, 64)
    assert not verdicts["like"]["shifted"], verdicts["like"]["psi"]
    assert card.calibration.val_prior["MEL"] == 0.25  # the fixture's validation split: a quarter of each class
    assert 0 < verdicts["like"]["expected_per_1000"]["MEL"] < 1000
    cast_psi = verdicts["cast"]["psi"]
    assert verdicts["cast"]["shifted"] and cast_psi["img_mean_b"] > 0.25 and cast_psi["img_luma_std"] > 0.25
    from skinscan.screening.output import record_summary

    assert verdicts["like"]["expected_per_1000"]["validation"]["MEL"] == 250.0
    assert verdicts["cast"]["expected_per_1000"] == {"withheld": "the images differ from validation"}
    record_summary(str(tmp_path / "cast"), {"shift": verdicts["cast"], "this_run_rows": 1})
    page = Path(write_report(str(tmp_path / "cast"))).read_text()
    assert "<p class=warn id=shift><b>Warning:</b> distribution shift" in page
    import json

    import pandas as pd
    import pyarrow.parquet as pq

    from skinscan.screening.writer import write_dataset_metadata

    path = write_dataset_metadata(str(tmp_path / "cast"), {"shift": verdicts["cast"]})  # the Parquet dataset says it
    assert json.loads(pq.read_schema(path).metadata[b"skinscan.shift"])["shifted"] is True
    assert len(pd.read_parquet(tmp_path / "cast" / "results")) == len(uris)  # readers of the folder skip it
    write_dataset_metadata(str(tmp_path / "cast"), None)  # a later run without a verdict leaves no stale one
    assert not Path(path).exists()


def test_thresholds_at_a_confidence_hold_the_target_by_their_lower_bound_and_the_whole_flag_is_recorded(
    overconfident_bundle, tmp_path
):
    """A point estimate meets the target on validation and misses it about half the time beyond; at confidence 0.95
    the threshold is chosen where the lower bound (Wilson, in lesions) reaches it: lower, more sensitive, said in the
    card. The flag as deployed (any point) gets its own validation figures."""
    from skinscan.config import CalibrateConfig
    from skinscan.evaluation.calibrate import choose_points, run

    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)  # classes ["NV", "MEL"]
    probs = np.zeros((n, 2), np.float32)
    probs[:, 1] = np.clip(np.where(y == 1, rng.normal(0.7, 0.2, n), rng.normal(0.3, 0.2, n)), 0, 1)
    probs[:, 0] = 1 - probs[:, 1]
    groups = np.arange(n).astype(str)
    plain = choose_points(probs, y, ["NV", "MEL"], groups, {"MEL": 0.8}, "val")["MEL"]
    sure = choose_points(probs, y, ["NV", "MEL"], groups, {"MEL": 0.8}, "val", confidence=0.95)["MEL"]
    assert plain.target_confidence is None and sure.target_confidence == 0.95
    assert sure.threshold < plain.threshold and sure.val_sensitivity > plain.val_sensitivity >= 0.8
    assert sure.val_sensitivity_ci[0] >= 0.8 - 0.02  # the two-sided 95% interval's bound sits below the 95% one-sided
    bundle, manifest = overconfident_bundle
    a = tmp_path / "a"
    shutil.copytree(bundle, a)
    card = run(CalibrateConfig(model=str(a), data=str(manifest), split="val", bootstrap=0))
    whole = card.calibration.flag_on_validation
    assert whole["rule"].startswith("P(MEL) >=") and " or " in whole["rule"]
    assert (
        0 <= whole["specificity"] <= 1
        and whole["sensitivity"] >= card.operating_points["malignant"].val_sensitivity - 1e-9  # an OR adds flags
    )
    assert len(whole["sensitivity_ci"]) == 2 and whole["referrals_per_1000"] > 0


def test_two_points_chosen_jointly_reach_each_target_as_deployed_and_flag_fewest_negatives():
    """The flag fires when either point does, so the malignant point's flags cover some melanomas: chosen together,
    the pair reaches each target on that point's positives as deployed and flags no more negatives than the two
    chosen alone, and no pair of candidate thresholds reaching both targets flags fewer (brute force)."""
    from skinscan.evaluation.calibrate import choose_points

    rng = np.random.default_rng(3)
    classes = ["MEL", "NV", "BCC"]
    n = 240
    y = rng.choice(3, n, p=[0.2, 0.6, 0.2])
    logits = rng.normal(0, 1, (n, 3)) + 1.2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    groups = np.arange(n).astype(str)
    targets = {"MEL": 0.9, "malignant": 0.9}
    alone = choose_points(probs, y, classes, groups, targets, "val", choice="alone")
    joint = choose_points(probs, y, classes, groups, targets, "val")
    mel, mal = probs[:, 0], probs[:, 0] + probs[:, 2]
    pos = {"MEL": y == 0, "malignant": y != 1}

    def flag(points):
        return (mel >= points["MEL"].threshold) | (mal >= points["malignant"].threshold)

    assert {p.chosen for p in joint.values()} == {"joint"} and {p.chosen for p in alone.values()} == {"alone"}
    for name in targets:
        assert flag(joint)[pos[name]].mean() >= 0.9 and joint[name].val_flag_sensitivity >= 0.9
    assert flag(joint)[y == 1].sum() < flag(alone)[y == 1].sum()  # strictly fewer negatives flagged here
    best = min(
        int(((mel >= a) | (mal >= b))[y == 1].sum())
        for a in np.unique(mel[y != 1])
        for b in np.unique(mal[y != 1])
        if all(((mel >= a) | (mal >= b))[pos[k]].mean() >= 0.9 for k in targets)
    )
    assert flag(joint)[y == 1].sum() == best


def test_joint_thresholds_at_a_confidence_hold_each_bound_and_say_when_no_pair_can(capsys):
    """At 95% confidence the joint pair keeps each target's lower bound (Wilson, in lesions) at or above it, flags
    no more negatives than the two chosen alone at the same bound, and where too few positives make any pair
    impossible, calibrate says so and falls back to each point alone."""
    from skinscan.evaluation.calibrate import choose_points
    from skinscan.evaluation.metrics import wilson_interval

    rng = np.random.default_rng(5)
    classes = ["MEL", "NV", "BCC"]
    n = 900
    y = rng.choice(3, n, p=[0.2, 0.6, 0.2])
    logits = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    groups = np.arange(n).astype(str)
    targets = {"MEL": 0.9, "malignant": 0.9}
    joint = choose_points(probs, y, classes, groups, targets, "val", 0, 0.95, "joint")
    alone = choose_points(probs, y, classes, groups, targets, "val", 0, 0.95, "alone")
    mel, mal = probs[:, 0], probs[:, 0] + probs[:, 2]

    def flag(points):
        return (mel >= points["MEL"].threshold) | (mal >= points["malignant"].threshold)

    for name, positive in {"MEL": y == 0, "malignant": y != 1}.items():
        k, m = flag(joint)[positive].sum(), positive.sum()
        assert wilson_interval(k, m, 0.90)[0] >= 0.9  # the one-sided 95% bound
        assert joint[name].target_confidence == 0.95 and joint[name].chosen == "joint"
    assert flag(joint)[y == 1].sum() <= flag(alone)[y == 1].sum()
    few = np.r_[np.flatnonzero(y == 1)[:50], np.flatnonzero(y == 0)[:8], np.flatnonzero(y == 2)[:8]]
    points = choose_points(probs[few], y[few], classes, groups[few], targets, "a small set", 0, 0.95, "joint")
    out = capsys.readouterr().out
    assert "too few for sensitivity 0.90 at 95% confidence" in out and "each point chosen alone" in out
    assert {p.chosen for p in points.values()} == {"alone"}
    assert points["MEL"].bound_reached is False and {p.bound_reached for p in joint.values()} == {True}
    from skinscan.screening.report import _operating_point  # the report says the bound was not reached

    page = _operating_point({"points": {"MEL": points["MEL"].model_dump()}}, "rule", {"flagged": 1, "ok": 2})
    assert "<b>not reached</b>" in page


def test_the_flags_melanoma_row_exists_whatever_the_points_and_rows():
    """The flag's melanoma sensitivity is its own row whenever melanoma is not the whole malignant set, decided by
    the classes: with one MEL point, or with rows that hold no BCC, it is not the flag's any-malignant figure."""
    from skinscan.evaluation.operating import rule_decisions
    from skinscan.models.calibration import FlagRule

    classes = ["MEL", "NV", "BCC"]
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.1, 0.1, 0.8]], np.float32)
    y = np.array([0, 1, 0, 2])
    one = rule_decisions(probs, y, classes, FlagRule({"MEL": (("MEL",), 0.5)}, "card"))
    flagged, melanoma = one["flag:MEL"]
    assert flagged[melanoma].mean() == 0.5 and one["flag"][0][one["flag"][1]].mean() == 1 / 3
    no_bcc = rule_decisions(
        probs[:3], y[:3], classes, FlagRule({"MEL": (("MEL",), 0.5), "malignant": (("MEL", "BCC"), 0.6)}, "card")
    )
    assert "flag:MEL" in no_bcc and "flag:malignant" not in no_bcc  # MEL+BCC: all the malignant classes it has
