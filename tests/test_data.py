import hashlib
import io
import multiprocessing
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinscan.config import DataConfig
from skinscan.data import storage
from skinscan.data.manifest import MANIFEST_COLUMNS, build_manifest, class_counts, read_folder, read_unlabeled
from skinscan.data.sampling import DistributedOversampler, oversample_frame, oversample_indices
from skinscan.data.splits import check_lesions_disjoint, overlap_report, remove_overlap, split_manifest
from skinscan.data.taxonomy import ham_dx_to_isic
from skinscan.errors import DataError


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "JPEG")
    return buf.getvalue()


FILES = {"NV/a.jpg": _jpeg((1, 2, 3)), "MEL/b.jpg": _jpeg((200, 2, 3)), "bcc/c.jpg": _jpeg((1, 200, 3))}


def _write_tree(kind: str, root) -> str:
    if kind == "folder":
        for name, data in FILES.items():
            p = root / "tree" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return str(root / "tree")
    if kind == "zip":
        path = root / "tree.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in FILES.items():
                zf.writestr(name, data)
        return str(path)
    if kind == "tar":
        path = root / "tree.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            for name, data in FILES.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return str(path)
    import fsspec

    fs = fsspec.filesystem("memory")
    for name, data in FILES.items():
        fs.pipe(f"/tree-{id(root)}/{name}", data)
    return f"memory://tree-{id(root)}"


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "memory"])
def test_folder_per_class_from_every_storage(kind, tmp_path):
    root = _write_tree(kind, tmp_path)
    df = read_folder(root)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert sorted(df["label"]) == ["BCC", "MEL", "NV"]
    for uri, sha in zip(df["uri"], df["sha256"]):
        assert hashlib.sha256(storage.read_bytes(uri)).hexdigest() == sha
    un = read_unlabeled(root)
    assert len(un) == 3 and un["label"].isna().all()


def test_archive_read_in_place_not_extracted(tmp_path):
    root = _write_tree("zip", tmp_path)
    read_folder(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.zip"]


def test_unknown_class_folder_is_a_data_error(tmp_path):
    (tmp_path / "tree" / "banana").mkdir(parents=True)
    (tmp_path / "tree" / "banana" / "x.jpg").write_bytes(_jpeg((0, 0, 0)))
    with pytest.raises(DataError, match="banana"):
        read_folder(str(tmp_path / "tree"))


def test_bad_csvs_are_data_errors(tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unrecognised CSV"):
        build_manifest(DataConfig(source=str(wrong)))
    twohot = tmp_path / "gt.csv"
    twohot.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\nx,1,1,0,0,0,0,0,0,0\n")
    with pytest.raises(DataError, match="exactly one positive"):
        build_manifest(DataConfig(source=str(twohot)))
    missing = tmp_path / "gt2.csv"
    missing.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\nnope,1,0,0,0,0,0,0,0,0\n")
    with pytest.raises(DataError, match="not found"):
        build_manifest(DataConfig(source=str(missing)))
    with pytest.raises(DataError, match="not found"):
        build_manifest(DataConfig(source=str(tmp_path / "absent.csv")))


def test_synthetic_archive_is_an_isic2019_dataset(synth_zip):
    df = build_manifest(DataConfig(source=str(synth_zip)))
    assert len(df) == 120 and df["source"].eq("isic2019").all()
    assert df["uri"].str.startswith("zip://images/").all()
    assert df["lesion_id"].notna().all()
    counts = class_counts(df)
    assert max(counts.values()) / min(counts.values()) >= 2  # imbalanced by design


def test_synthetic_masks_are_exact_and_nonempty(synth_zip):
    from skinscan.data.masks import mask_uri_for

    df = build_manifest(DataConfig(source=str(synth_zip), hash=False))
    mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(mask_uri_for(df["uri"][0])))))
    assert set(np.unique(mask)) <= {0, 255} and 0.01 < (mask > 0).mean() < 0.6


def test_akiec_decided_by_isic_ground_truth():
    assert ham_dx_to_isic("akiec", "SCC") == "SCC"
    assert ham_dx_to_isic("akiec", None) == "AK"
    assert ham_dx_to_isic("nv") == "NV"
    with pytest.raises(DataError):
        ham_dx_to_isic("xyz")


def _toy_manifest(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["NV", "MEL", "BCC"], size=n, p=[0.7, 0.2, 0.1])
    lesions = [f"L{i // 3}" for i in range(n)]  # 3 images per lesion
    return pd.DataFrame(
        {
            "image_id": [f"I{i}" for i in range(n)],
            "uri": "",
            "label": labels,
            "lesion_id": lesions,
            "source": "toy",
            "sha256": [f"h{i}" for i in range(n)],
        }
    )


def test_split_is_lesion_grouped_stratified_and_deterministic():
    df = _toy_manifest()
    a = split_manifest(df, 0.2, 0.2, seed=3)
    b = split_manifest(df.sample(frac=1, random_state=1), 0.2, 0.2, seed=3).set_index("image_id")
    assert (a.set_index("image_id")["split"] == b.loc[a["image_id"], "split"]).all()
    check_lesions_disjoint(a)
    for split, frac in (("val", 0.2), ("test", 0.2)):
        part = a[a["split"] == split]
        assert abs(len(part) / len(a) - frac) < 0.05
        assert set(part["label"]) == {"NV", "MEL", "BCC"}


def test_overlap_by_id_hash_and_lesion():
    a = _toy_manifest()
    b = a.iloc[:10].copy()
    b.loc[b.index[:4], "image_id"] = ["X1", "X2", "X3", "X4"]  # same bytes, renamed
    b.loc[b.index[:2], "sha256"] = ["other1", "other2"]  # renamed and re-encoded, same lesion
    rep = overlap_report(a, b)
    assert (rep.by_image_id, rep.by_sha256, rep.by_lesion_id, rep.overlapping) == (6, 8, 10, 10)
    cleaned, _ = remove_overlap(a, b)
    assert not set(cleaned["lesion_id"]) & set(b["lesion_id"])


def test_oversampling_counts_equal_largest_and_seeded():
    labels = ["a"] * 50 + ["b"] * 7 + ["c"] * 1
    idx = oversample_indices(labels, seed=1)
    counts = pd.Series(np.asarray(labels)[idx]).value_counts()
    assert counts.to_dict() == {"a": 50, "b": 50, "c": 50}
    assert np.array_equal(idx, oversample_indices(labels, seed=1))
    assert set(range(58)) <= set(idx.tolist())  # every original sample kept


def test_oversample_frame_reports_histograms():
    df = _toy_manifest()
    out, hist = oversample_frame(df, seed=0)
    assert len(set(hist["after"].values())) == 1 and hist["after"]["NV"] == hist["before"]["NV"]


def test_distributed_oversampler_shards_are_disjoint_and_balanced():
    labels = ["a"] * 90 + ["b"] * 10
    samplers = [DistributedOversampler(labels, 2, r, seed=5) for r in range(2)]
    for s in samplers:
        s.set_epoch(3)
    shards = [list(s) for s in samplers]
    assert len(shards[0]) == len(shards[1]) == 90
    full = samplers[0].epoch_indices()
    assert sorted(shards[0] + shards[1]) == sorted(full.tolist())
    for shard in shards:
        counts = pd.Series(np.asarray(labels)[shard]).value_counts()
        assert abs(counts["a"] - counts["b"]) / counts.max() < 0.25


# ---------------------------------------------------------------- real data


def test_real_ham10000_manifest_counts(ham_dir):
    df = build_manifest(DataConfig(source=str(ham_dir / "HAM10000_metadata.csv")))
    assert len(df) == 8012 and df["sha256"].str.len().eq(64).all()
    assert class_counts(df) == {
        "MEL": 890,
        "NV": 5364,
        "BCC": 411,
        "AK": 104,
        "BKL": 879,
        "DF": 92,
        "VASC": 114,
        "SCC": 158,
    }


def test_real_isic2019_manifest_counts(ham_dir, isic_archive_dir):
    df = build_manifest(DataConfig(source=str(ham_dir / "ISIC_2019_Training_GroundTruth.csv"), hash=False))
    assert len(df) == 8012 and class_counts(df)["SCC"] == 158 and class_counts(df)["AK"] == 104
    arch = build_manifest(DataConfig(source=str(isic_archive_dir / "ISIC_2019_Training_GroundTruth.csv")))
    assert len(arch) == 40 and set(arch["label"]) <= {"MEL", "NV"}


def test_real_split_has_no_lesion_in_two_splits(ham_dir):
    df = build_manifest(DataConfig(source=str(ham_dir / "HAM10000_metadata.csv"), hash=False))
    df = split_manifest(df, 0.15, 0.15, seed=0)
    check_lesions_disjoint(df)
    assert df["lesion_id"].nunique() < len(df)  # several images per lesion exist, and were grouped
    train, _ = oversample_frame(df[df["split"] == "train"], seed=0)
    assert train["label"].value_counts().nunique() == 1


def test_real_overlap_finds_every_shared_image(ham_dir):
    isic = build_manifest(DataConfig(source=str(ham_dir / "ISIC_2019_Training_GroundTruth.csv")))
    ham = build_manifest(DataConfig(source=str(ham_dir / "HAM10000_metadata.csv")))
    rep = overlap_report(isic, ham)
    assert rep.by_image_id == rep.by_sha256 == rep.overlapping == 8012
    cleaned, _ = remove_overlap(isic, ham)
    assert len(cleaned) == 0


def _isic_with_ham_overlap(root):
    """An ISIC 2019-like set (ground truth + metadata with BCN lesion groups) that contains a HAM10000-like set."""
    from skinscan.data.taxonomy import ISIC2019_OUTPUT_COLUMNS

    rng = np.random.default_rng(0)
    (root / "isic" / "images").mkdir(parents=True)
    (root / "ham" / "images").mkdir(parents=True)
    rows, meta, ham = [], [], []
    for i in range(120):
        image = f"ISIC_{i:07d}"
        label = ["NV", "MEL", "BCC", "BKL"][rng.integers(0, 4)]
        data = _jpeg((i, 255 - i, (7 * i) % 256))
        (root / "isic" / "images" / f"{image}.jpg").write_bytes(data)
        rows.append({"image": image, **{c: float(c == label) for c in ISIC2019_OUTPUT_COLUMNS}})
        if i < 30:  # HAM10000 images, in ISIC 2019 as well
            (root / "ham" / "images" / f"{image}.jpg").write_bytes(data)
            ham.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image, "dx": label.lower()})
            meta.append({"image": image, "lesion_id": f"HAM_{i // 2:07d}"})
        else:  # BCN_20000: several images per lesion
            meta.append({"image": image, "lesion_id": f"BCN_{i // 4:07d}"})
    pd.DataFrame(rows).to_csv(root / "isic" / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "meta.csv", index=False)
    pd.DataFrame(ham).to_csv(root / "ham" / "HAM10000_metadata.csv", index=False)
    return root / "isic" / "ISIC_2019_Training_GroundTruth.csv", root / "ham" / "HAM10000_metadata.csv"


def test_overlap_recipe_keeps_isic_lesion_ids_so_splits_stay_lesion_grouped(tmp_path, capsys):
    from skinscan.cli import main

    gt, ham = _isic_with_ham_overlap(tmp_path)
    out = tmp_path / "isic_without_ham.csv"
    assert main(["data", "overlap", str(gt), str(ham), "--metadata", str(tmp_path / "meta.csv"), "-o", str(out)]) == 0
    assert "no lesion ids" not in capsys.readouterr().err
    cleaned = build_manifest(DataConfig(source=str(out)))
    assert len(cleaned) == 90 and cleaned["lesion_id"].str.startswith("BCN_").all()
    split = split_manifest(cleaned, 0.2, 0.2, seed=0)
    per_lesion = split.groupby("lesion_id")["split"].nunique()
    assert (per_lesion == 1).all() and per_lesion.size == 23  # every BCN lesion group in exactly one split
    assert split.groupby("lesion_id").size().max() == 4

    # without the metadata the recipe says what is lost
    out2 = tmp_path / "per_image.csv"
    assert main(["data", "overlap", str(gt), str(ham), "-o", str(out2)]) == 0
    assert "no lesion ids" in capsys.readouterr().err
    assert build_manifest(DataConfig(source=str(out2)))["lesion_id"].isna().all()


def _read_all_members(uris: list[str], rounds: int) -> list[str]:
    return [hashlib.sha1(storage.read_bytes(u)).hexdigest() for _ in range(rounds) for u in uris]


def test_forked_processes_read_an_archive_the_parent_opened(tmp_path):
    """DataLoader workers are forked after the parent listed the zip: each must open the archive itself, or the
    shared file offset makes concurrent readers see other members' bytes (CI failed on this, 'Bad magic number')."""
    rng = np.random.default_rng(0)
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(40):
            zf.writestr(f"m{i}.bin", rng.bytes(200_000))
    uris = storage.list_files(str(path))  # the parent opens (and caches) the archive before forking
    expected = _read_all_members(uris, 1)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        got = pool.starmap(_read_all_members, [(uris, 5)] * 4)
    assert all(g == expected * 5 for g in got)


def test_threads_reading_members_of_one_zip_at_once_all_get_their_bytes(tmp_path):
    """Evaluation reads with 4 threads: those opening the same archive at once once made two filesystems, and the
    dropped one closed the file the other read ("seek of closed file", seen on `skinscan calibrate` of the demo)."""
    import zipfile
    from concurrent.futures import ThreadPoolExecutor

    from skinscan.data import storage

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(40):
            z.writestr(f"img_{i}.jpg", bytes([i]) * (5000 + i))
    uris = [f"zip://img_{i}.jpg::{archive}" for i in range(40)]
    for _ in range(10):
        storage.archive_fs.cache_clear()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(storage.read_bytes, uris))
        assert [len(g) for g in got] == [5000 + i for i in range(40)] and all(
            g[:1] == bytes([i]) for i, g in enumerate(got)
        )
