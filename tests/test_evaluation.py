"""Metrics on fixed predictions equal scikit-learn's and the official ISIC scorer's; the leakage guard fires."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from skinscan.evaluation.isic import official_score, write_isic_files
from skinscan.evaluation.metrics import evaluate_probs, expected_calibration_error, sensitivity_at_specificity

CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]


def _fixed(n=400, k=8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.12, 0.6, 0.06, 0.03, 0.11, 0.02, 0.02, 0.04])
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random((n, 1))
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_metrics_equal_sklearn():
    y, p = _fixed()
    pred = p.argmax(1)
    m = evaluate_probs(y, p, CLASSES)
    assert m["accuracy"] == pytest.approx((pred == y).mean(), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["macro_avg"]["f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["weighted_avg"]["f1"] == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-12)
    per = precision_score(y, pred, average=None, labels=range(8), zero_division=0)
    rec = recall_score(y, pred, average=None, labels=range(8), zero_division=0)
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c]["precision"] == pytest.approx(per[i], abs=1e-12)
        assert m["per_class"][c]["recall"] == pytest.approx(rec[i], abs=1e-12)
        assert m["per_class"][c]["support"] == int((y == i).sum())
        assert m["auc"][c] == pytest.approx(roc_auc_score(y == i, p[:, i]), abs=1e-12)
    assert np.array(m["confusion_matrix"]).sum() == len(y)


def test_ham10000_view_merges_ak_and_scc_into_akiec():
    from skinscan.evaluation.classifier import ham10000_view

    y, p = _fixed(seed=1)
    ak, scc = CLASSES.index("AK"), CLASSES.index("SCC")
    p[y == ak, scc] += 5.0  # every AK is called SCC: wrong in ISIC 2019 terms, right in HAM10000's
    h = ham10000_view(y, p, CLASSES)
    dx = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
    assert h["classes"] == dx
    to_dx = np.array([dx.index(d) for d in ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc", "akiec"]])
    p7 = np.zeros((len(y), 7))
    for i in range(8):
        p7[:, to_dx[i]] += p[:, i]
    y7, pred7 = to_dx[y], p7.argmax(1)
    assert h["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y7, pred7), abs=1e-12)
    assert h["macro_f1"] == pytest.approx(f1_score(y7, pred7, average="macro"), abs=1e-12)
    assert h["per_class"]["akiec"]["support"] == int(((y == ak) | (y == scc)).sum())
    assert h["per_class"]["akiec"]["recall"] > evaluate_probs(y, p, CLASSES)["per_class"]["AK"]["recall"]
    assert h["majority_baseline"]["balanced_accuracy"] == pytest.approx(1 / 7)


@pytest.mark.parametrize("classes", [["MEL", "NV", "BCC", "BKL"], ["MEL", "NV", "AK", "SCC", "UNK"]])
def test_no_ham10000_view_when_there_is_nothing_to_merge_or_no_counterpart(classes):
    from skinscan.evaluation.classifier import ham10000_view

    y = np.arange(20) % len(classes)
    assert ham10000_view(y, np.eye(len(classes))[y], classes) is None


def _recorded_official(name: str, tmp_path):
    """(truth, probabilities, files, the official scorer's recorded output) of one case of
    tests/fixtures/isic_official.py, after checking that the files are the bytes the scorer scored."""
    import hashlib
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    try:
        import isic_official
    finally:
        sys.path.pop(0)
    record = json.loads(isic_official.RECORD.read_text())["cases"][name]
    ids, y, p = isic_official.cases()[name]
    files = write_isic_files(ids, y, p, CLASSES, tmp_path)
    for key, f in (("truth_sha256", "truth_scored"), ("predictions_sha256", "predictions_scored")):
        regenerate = ".venv/bin/python tests/fixtures/isic_official.py"
        assert hashlib.sha256(files[f].read_bytes()).hexdigest() == record[key], f"{f} changed: run {regenerate}"
    return y, p, files, record


def test_isic_balanced_accuracy_equals_official_scorer(tmp_path):
    y, p, files, official = _recorded_official("all_classes", tmp_path)
    ours = evaluate_probs(y, p, CLASSES)
    assert abs(official["balanced_accuracy"] - ours["isic_balanced_accuracy"]) <= 1e-9
    assert abs(official["balanced_accuracy"] - ours["balanced_accuracy"]) <= 1e-9  # all classes present here
    for c in CLASSES:
        assert abs(official["auc"][c] - ours["auc"][c]) <= 1e-9
    full = pd.read_csv(files["predictions"])
    assert list(full.columns) == ["image", *CLASSES, "UNK"] and (full["UNK"] == 0).all()


def test_isic_metric_when_a_class_is_absent_from_truth(tmp_path):
    y, p, files, official = _recorded_official("df_absent", tmp_path)
    assert "DF" not in pd.read_csv(files["truth_scored"]).columns and "DF" not in official["auc"]
    assert abs(official["balanced_accuracy"] - evaluate_probs(y, p, CLASSES)["isic_balanced_accuracy"]) <= 1e-9


def test_official_scorer_runs_in_its_own_interpreter(tmp_path, monkeypatch):
    """`official_score` takes the scorer from SKINSCAN_ISIC_SCORER_PYTHON; an interpreter without it gives None."""
    import sys

    y, p = _fixed(seed=5, n=40)
    files = write_isic_files([f"I{i}" for i in range(40)], y, p, CLASSES, tmp_path)
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'exec {sys.executable} -c \'import json; print(json.dumps({{"balanced_accuracy": 0.5, "auc": {{}}}}))\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("SKINSCAN_ISIC_SCORER_PYTHON", str(fake))
    assert official_score(files["truth_scored"], files["predictions_scored"]) == {"balanced_accuracy": 0.5, "auc": {}}
    monkeypatch.setenv("SKINSCAN_ISIC_SCORER_PYTHON", sys.executable)  # the test environment: no scorer
    assert official_score(files["truth_scored"], files["predictions_scored"]) is None


def test_sensitivity_at_specificity_and_ece():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.6, 0.05, 0.15, 0.25])
    assert sensitivity_at_specificity(y.astype(bool), s, 0.8) == 1.0  # one false positive of 6 allowed
    assert sensitivity_at_specificity(y.astype(bool), s, 0.9) == 0.75
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    ece, _ = expected_calibration_error(np.array([0, 1, 0, 0]), probs)
    assert ece == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))


def test_overlap_guard_fires_on_isic2019_containing_ham10000(tmp_path, tiny_bundles):
    """Bundle trained on an 'ISIC 2019' manifest that contains the 'HAM10000' images being evaluated."""
    import shutil

    from skinscan.data.synth import render
    from skinscan.errors import LeakageError
    from skinscan.evaluation.classifier import evaluate

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["swin"], bundle)
    from PIL import Image

    imgs = tmp_path / "ham" / "images"
    imgs.mkdir(parents=True)
    rows = []
    for i, label in enumerate(["MEL", "NV", "BCC", "BKL"] * 3):
        Image.fromarray(render(label, 64, np.random.default_rng(i))[0]).save(imgs / f"ISIC_{i:07d}.jpg")
        rows.append({"lesion_id": f"HAM_{i:07d}", "image_id": f"ISIC_{i:07d}", "dx": label.lower()})
    pd.DataFrame(rows).to_csv(tmp_path / "ham" / "HAM10000_metadata.csv", index=False)
    from skinscan.config import DataConfig
    from skinscan.data.manifest import build_manifest

    ham = build_manifest(DataConfig(source=str(tmp_path / "ham" / "HAM10000_metadata.csv")))
    isic_train = pd.concat(
        [
            ham.assign(source="isic2019", lesion_id=None),
            ham.assign(
                image_id="ISIC_99" + ham["image_id"].str[-5:], sha256="x" + ham["sha256"].str[1:], lesion_id=None
            ),
        ]
    )
    isic_train.assign(split="train").to_parquet(bundle / "train_manifest.parquet")
    with pytest.raises(LeakageError, match="12 of 12 evaluation images overlap"):
        evaluate(bundle, str(tmp_path / "ham" / "HAM10000_metadata.csv"), tmp_path / "ev", progress=False)
    r = evaluate(
        bundle,
        str(tmp_path / "ham" / "HAM10000_metadata.csv"),
        tmp_path / "ev",
        allow_overlap=True,
        progress=False,
        backend="torch",
    )
    assert r["leakage"]["overlapping"] == 12 and r["leakage"]["by_sha256"] == 12
    for f in (
        "evaluation.json",
        "evaluation.md",
        "confusion_raw.png",
        "roc.png",
        "reliability.png",
        "isic_predictions.csv",
    ):
        assert (tmp_path / "ev" / f).stat().st_size > 0
    assert "does not estimate real-world performance" in (tmp_path / "ev" / "evaluation.md").read_text()
