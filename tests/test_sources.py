"""Several training sources in one manifest: split within each source, lesions whole, no image in two sources."""

import numpy as np
import pandas as pd
import pytest

from skinscan.config import DataConfig
from skinscan.data.manifest import build_sources
from skinscan.data.splits import check_lesions_disjoint, split_by_source
from skinscan.errors import DataError


def _source(name: str, n_lesions: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for lesion in range(n_lesions):
        label = rng.choice(["MEL", "NV", "BKL"], p=[0.2, 0.6, 0.2])
        for k in range(rng.integers(1, 4)):
            rows.append(
                {
                    "image_id": f"{name}_{lesion}_{k}",
                    "uri": f"/x/{name}_{lesion}_{k}.jpg",
                    "label": label,
                    "lesion_id": f"L{lesion}",
                    "source": name,
                    "sha256": "",
                }
            )
    return pd.DataFrame(rows)


def test_each_source_is_split_on_its_own_and_lesions_never_cross_splits():
    df = pd.concat([_source("ham", 300, 0), _source("isic2017", 200, 1)], ignore_index=True)
    out = split_by_source(df, 0.15, 0.15, seed=0)
    check_lesions_disjoint(out.assign(lesion_id=out["source"] + ":" + out["lesion_id"]))
    for src, part in out.groupby("source"):
        shares = part["split"].value_counts(normalize=True)
        assert set(shares.index) == {"train", "val", "test"}
        assert 0.10 < shares["test"] < 0.20 and 0.10 < shares["val"] < 0.20, (src, shares.to_dict())
        per_lesion = part.groupby("lesion_id")["split"].nunique()
        assert (per_lesion == 1).all()  # every lesion whole, within its source
    assert out["lesion_id"].equals(df["lesion_id"])  # ids unchanged in the result
    # the same lesion id in two sources is two lesions: they are split independently
    same = out[out["lesion_id"] == "L5"].groupby("source")["split"].first()
    assert len(same) == 2


def test_sources_are_named_filtered_and_never_share_an_image(tmp_path):
    a, b = _source("a", 20, 2), _source("b", 20, 3)
    b["source_split"] = np.where(np.arange(len(b)) % 3 == 0, "validation", "training")
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    df = build_sources(
        [
            DataConfig(source=str(tmp_path / "a.csv"), name="clinic_a"),
            DataConfig(source=str(tmp_path / "b.csv"), name="clinic_b", where={"source_split": ["training"]}),
        ]
    )
    assert set(df["source"]) == {"clinic_a", "clinic_b"}
    assert len(df) == len(a) + int((b["source_split"] == "training").sum())
    with pytest.raises(DataError, match="in two sources"):
        build_sources([DataConfig(source=str(tmp_path / "a.csv")), DataConfig(source=str(tmp_path / "a.csv"))])
    with pytest.raises(DataError, match="no column 'site'"):
        build_sources([DataConfig(source=str(tmp_path / "a.csv"), where={"site": ["back"]})])


def test_metadata_of_different_sources_gets_one_type_and_writes_to_parquet(tmp_path):
    """HAM10000 writes ages as numbers, ISIC 2017 as text with "unknown": the union must still be one column."""
    a, b = _source("a", 5, 4), _source("b", 5, 5)
    a["age"], a["sex"] = 45.0, "male"
    b["age"] = ["unknown" if i % 2 else "15" for i in range(len(b))]
    b["sex"] = ["unknown" if i % 3 else "female" for i in range(len(b))]
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    df = build_sources([DataConfig(source=str(tmp_path / "a.csv")), DataConfig(source=str(tmp_path / "b.csv"))])
    df.to_parquet(tmp_path / "union.parquet")  # what training writes as train_manifest.parquet
    back = pd.read_parquet(tmp_path / "union.parquet")
    assert back["age"].dtype.kind == "f" and back["age"].isna().sum() == (b["age"] == "unknown").sum()
    assert set(back["sex"].dropna()) == {"male", "female"}


def test_rows_with_and_without_masks_and_metadata_train_under_the_installed_pandas(tmp_path, monkeypatch):
    """Two sources as `ham_isic2017_cpu.yaml` has them: one with masks and metadata, one with neither. Manifest ->
    training rows -> data set -> one training step, on whatever pandas is installed (pandas 3 reads a missing text
    value as NaN, a float, which once reached the mask reader as a URI)."""
    import shutil

    import ray.train.torch
    import torch

    from skinscan.config import SynthConfig, TrainConfig
    from skinscan.data.manifest import OPTIONAL_TEXT_COLUMNS
    from skinscan.data.synth import generate
    from skinscan.training import loop
    from skinscan.training.driver import _rows, prepare_data
    from skinscan.training.steps import UNKNOWN_MASK, train_one_epoch

    generate(SynthConfig(output=str(tmp_path / "a"), n_images=24, size=48, seed=1, metadata=True), progress=False)
    generate(SynthConfig(output=str(tmp_path / "b"), n_images=24, size=48, seed=2), progress=False)
    shutil.rmtree(tmp_path / "b" / "masks")
    cfg = TrainConfig.model_validate(
        {
            "data": {"source": str(tmp_path / "a"), "name": "with"},
            "extra_data": [{"source": str(tmp_path / "b"), "name": "without"}],
            "lesion_mask_weight": 1.0,
            "batch_size": 8,
            "loader_workers": 0,
            "max_train_samples_per_epoch": 16,
            "model": {"name": "resnet18", "img_size": 32, "metadata": True},
        }
    )
    df, classes = prepare_data(cfg)
    rows = _rows(df, "train")
    for col in OPTIONAL_TEXT_COLUMNS:  # None, never NaN, in every row a stage reads
        assert not any(isinstance(r.get(col), float) for r in rows), col
    without = [r for r in rows if r["uri"].startswith(str(tmp_path / "b"))]
    assert without and all(r["mask_uri"] is None and r["sex"] is None and r["site"] is None for r in without)
    assert any(r["mask_uri"] and r["sex"] for r in rows if r not in without)

    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda m: m)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    config = {"classes": classes, "train": rows, "val": _rows(df, "val")}
    loader, _, _ = loop.make_loaders(cfg, config, rank=0, world=1)
    ds = loader.dataset
    i = rows.index(without[0])
    transform, ds.transform = ds.transform, None  # unaugmented (rotation pads corners with 0)
    assert (ds[i][2] == UNKNOWN_MASK).all() and not ds[i][3].any()  # no mask: all unknown; no metadata: zeros
    with_mask = rows.index(next(r for r in rows if r not in without))
    assert not (ds[with_mask][2] == UNKNOWN_MASK).any()
    ds.transform = transform
    t = loop._trainee(cfg, len(classes), steps_per_epoch=len(loader))
    before = [p.detach().clone() for p in t.unwrapped.parameters()]
    loss_sum, seen, _ = train_one_epoch(t, loader)
    assert seen == 16 and np.isfinite(loss_sum)
    assert any(not torch.equal(a, b) for a, b in zip(before, t.unwrapped.parameters()))
