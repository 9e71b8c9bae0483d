"""Listing inputs in pieces: the driver plans units from the top of the input only; each unit lists to the same
inputs `read_unlabeled` / a manifest give, in chunks, with stable resume keys."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import use_s3

from skinscan.data.keys import uri_keys
from skinscan.data.listing import iter_unit, list_all, plan_units
from skinscan.data.manifest import read_unlabeled
from skinscan.errors import DataError


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "tree"
    for name in ["a.jpg", "sub1/b.jpg", "sub1/deep/c.jpg", "sub2/a.jpg", ".hidden/x.jpg", "notes.csv"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def test_folder_units_cover_what_read_unlabeled_lists(tree):
    units = plan_units(str(tree))
    assert [u.kind for u in units] == ["files", "tree", "tree", "tree"]  # own files, then one unit per subfolder
    listed = list_all(str(tree)).to_pandas()
    expected = read_unlabeled(str(tree), hash_bytes=False)
    assert sorted(listed["uri"]) == sorted(expected["uri"]) and len(listed) == 5
    assert (listed["key"].to_numpy() == uri_keys(listed["uri"].tolist())).all()


def test_archive_folder_and_chunks(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(10):
            zf.writestr(f"images/img_{i}.jpg", b"x")
        zf.writestr("other/skip.jpg", b"x")
    (unit,) = plan_units(f"zip://images::{archive}")
    chunks = list(iter_unit(unit, chunk_rows=4))
    assert [c.num_rows for c in chunks] == [4, 4, 2]
    uris = [u for c in chunks for u in c.column("uri").to_pylist()]
    assert all(u.startswith("zip://images/") and u.endswith(f"::{archive}") for u in uris) and len(set(uris)) == 10


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_is_streamed_with_only_ids_uris_and_metadata(tmp_path, suffix):
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(7)], "uri": [f"/data/{k}.jpg" for k in range(7)]})
    df["label"] = "NV"
    df["age"] = [30, None, 50, 60, 70, 80, 90]
    df["sex"] = ["male", "female", None, "unknown", "male", "male", "female"]
    path = tmp_path / f"m.{suffix}"
    df.to_csv(path, index=False) if suffix == "csv" else df.to_parquet(path)
    (unit,) = plan_units(str(path))
    chunks = list(iter_unit(unit, chunk_rows=3))
    assert [c.num_rows for c in chunks] == [3, 3, 1]
    assert chunks[0].column_names == ["image_id", "uri", "key", "age", "sex", "site"]  # never the label
    got = pd.concat([c.to_pandas() for c in chunks])
    assert got["uri"].tolist() == df["uri"].tolist() and got["image_id"].tolist() == df["image_id"].tolist()
    assert got["age"].fillna(-1).tolist() == [30, -1, 50, 60, 70, 80, 90] and got["site"].isna().all()
    assert pa.concat_tables(chunks).column("sex").to_pylist()[:3] == ["male", "female", None]  # null, not "nan"


def test_missing_inputs_are_one_line_errors(tmp_path):
    for uri in [tmp_path / "nope", tmp_path / "nope.zip", tmp_path / "nope.csv", f"zip://x::{tmp_path / 'n.zip'}"]:
        with pytest.raises(DataError, match="not found"):
            plan_units(str(uri))


def test_masks_are_not_inputs_unless_asked(tmp_path):
    """An ISIC-style archive or folder: masks (`*_segmentation.png`, `*_superpixels.png`, a `masks/` folder) are
    left out of the listing unless `include_masks`; a manifest lists exactly its rows."""
    import zipfile

    names = [
        "images/ISIC_1.jpg",
        "images/ISIC_2.jpg",
        "images/ISIC_2_superpixels.png",
        "ISIC_3_segmentation.png",
        "masks/ISIC_1_segmentation.png",
        "masks/ISIC_2.png",
    ]
    archive = tmp_path / "isic.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for n in names:
            z.writestr(n, b"x")
    folder = tmp_path / "folder"
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(b"x")
    for root in (str(archive), str(folder), f"zip://images::{archive}"):
        assert sorted(list_all(root).column("image_id").to_pylist()) == ["ISIC_1", "ISIC_2"], root
    assert list_all(str(archive), include_masks=True).num_rows == 6
    assert list_all(str(folder), include_masks=True).num_rows == 6
    inside = tmp_path / "masks" / "data"  # a root under a folder named masks is still listed
    inside.mkdir(parents=True)
    (inside / "a.jpg").write_bytes(b"x")
    assert list_all(str(inside)).column("image_id").to_pylist() == ["a"]


def test_resume_lookup_is_a_binary_search_that_agrees_with_isin():
    from skinscan.data.keys import in_sorted

    rng = np.random.default_rng(0)
    written = np.unique(rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True))
    batch = np.concatenate([written[::7], rng.integers(0, 2**64 - 1, 300, dtype=np.uint64, endpoint=True)])
    batch = np.concatenate([batch, [np.uint64(0), np.uint64(2**64 - 1)]]).astype(np.uint64)
    np.testing.assert_array_equal(in_sorted(batch, written), np.isin(batch, written))
    assert not in_sorted(batch, np.zeros(0, np.uint64)).any()


def test_an_object_store_prefix_is_one_unit_listed_page_by_page_in_its_task(s3_server, monkeypatch):
    endpoint, fs = s3_server
    names = [f"flat/img_{i:05d}.jpg" for i in range(2099)] + ["flat/masks/m.png", "flat/.hidden.jpg", "flat/x.csv"]
    names += ["flat/sub/", "flat/sub/img_0.jpg", "flat2/sibling.jpg"]  # a folder placeholder, a nested file, a sibling
    fs.pipe({f"skinscan-test/prefix-{id(names)}/{n}": b"x" for n in names})
    use_s3(monkeypatch, endpoint)
    uri = f"s3://skinscan-test/prefix-{id(names)}/flat"
    (unit,) = plan_units(uri)  # the driver only checks that the prefix exists: no listing of it
    assert unit.kind == "prefix"
    chunks = list(iter_unit(unit, chunk_rows=1000))
    assert [c.num_rows for c in chunks] == [1000, 1000, 100]  # masks, hidden files and sidecars are not inputs
    uris = [u for c in chunks for u in c.column("uri").to_pylist()]
    ids = [i for c in chunks for i in c.column("image_id").to_pylist()]
    assert len(set(uris)) == 2100 and uris == sorted(uris) and all(u.startswith(f"{uri}/") for u in uris)
    assert ids[0] == "img_00000" and "sub/img_0" in ids and len(set(ids)) == 2100  # unique without a memory of ids
