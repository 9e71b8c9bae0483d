"""Near-duplicate pictures (perceptual hash): found across ids, bytes, sizes, encodings and flips; kept in one
split; refused by the leakage guard; dropped when a later training source republishes an earlier one's."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from skinscan.data import phash as ph


def lesion_like(seed: int, h: int = 150, w: int = 200) -> np.ndarray:
    """A dark blob in a vignette with its own texture: what every dermoscopy image looks like at low frequency."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    blob = np.exp(-((yy - 0.37) ** 2 + (xx - 0.5) ** 2) / 0.03)
    texture = gaussian_filter(rng.normal(0, 1, (h, w)), 3)
    grey = 200 - 120 * blob + 25 * texture / texture.std()
    return np.clip(np.stack([grey, grey * 0.8, grey * 0.7], -1), 0, 255).astype(np.uint8)


def republish(img: np.ndarray, size=(256, 256), quality=70, gain=1.08) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).resize(size).point(lambda v: min(255, int(v * gain))).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(ph.distances(ph.as_bits([ph.phash(a)]), ph.as_bits([ph.phash(b)]))[0])


def test_a_republished_flipped_or_turned_copy_is_near_and_another_lesion_is_not():
    img = lesion_like(0)
    for copy in (republish(img), republish(img[:, ::-1]), republish(np.rot90(img).copy(), size=(180, 240))):
        assert distance(img, copy) <= ph.MAX_DISTANCE
    others = [distance(img, lesion_like(s)) for s in range(1, 6)]
    assert min(others) > 2 * ph.MAX_DISTANCE  # the shared blob and vignette do not make them alike
    assert ph.present([ph.phash(img), "", None, "abc"]).tolist() == [True, False, False, False]
    assert ph.phash(np.full((50, 60, 3), 120, np.uint8)) == ""  # a blank picture is nobody's copy


def _manifest(tmp_path, name: str, images: dict[str, np.ndarray], label="NV", lesions=None) -> pd.DataFrame:
    from skinscan.data.manifest import fingerprint_uris

    folder = tmp_path / name
    folder.mkdir()
    uris = []
    for image_id, img in images.items():
        path = folder / f"{image_id}.jpg"
        Image.fromarray(img).save(path, quality=90)
        uris.append(str(path))
    sha, pic = fingerprint_uris(uris)
    return pd.DataFrame(
        {
            "image_id": list(images),
            "uri": uris,
            "label": label,
            "source": name,
            "sha256": sha,
            "phash": pic,
            "lesion_id": lesions or [None] * len(uris),
        }  # fmt: skip
    )


def test_the_leakage_guard_finds_a_picture_under_another_id_and_other_bytes(tmp_path):
    from skinscan.data.splits import overlap_report, remove_overlap

    train = _manifest(tmp_path, "train", {f"A{i}": lesion_like(i) for i in range(6)})
    other = _manifest(tmp_path, "other", {"B0": republish(lesion_like(2)[::-1].copy()), "B1": lesion_like(50)})
    report = overlap_report(train, other)
    assert (report.by_image_id, report.by_sha256, report.by_near_duplicate, report.overlapping) == (0, 0, 1, 1)
    assert report.examples == ["B0"] and "near-duplicate picture 1" in report.summary()
    cleaned, _ = remove_overlap(other, train)
    assert cleaned["image_id"].tolist() == ["B1"]


def test_near_duplicates_of_different_lesions_land_in_one_split_whatever_the_row_order(tmp_path):
    from skinscan.data.splits import check_lesions_disjoint, duplicate_groups, split_manifest

    images = {f"I{i}": lesion_like(i) for i in range(40)}
    images["copy_of_I3"] = republish(lesion_like(3))
    df = _manifest(tmp_path, "src", images, lesions=[f"L{i}" for i in range(41)])
    groups = duplicate_groups(df)
    assert groups[df["image_id"] == "copy_of_I3"].iloc[0] == groups[df["image_id"] == "I3"].iloc[0]
    assert groups.nunique() == 40
    for seed in range(5):  # without the hash, lesion L3 and L40 would be split independently
        split = split_manifest(df, 0.25, 0.25, seed).set_index("image_id")["split"]
        assert split["I3"] == split["copy_of_I3"]
        shuffled = split_manifest(df.sample(frac=1, random_state=seed), 0.25, 0.25, seed).set_index("image_id")
        assert shuffled["split"].sort_index().equals(split.sort_index())
    apart = split_manifest(df, 0.25, 0.25, 0)
    apart.loc[apart["image_id"] == "copy_of_I3", "split"] = "test" if (apart["split"][3] != "test") else "train"
    with pytest.raises(Exception, match="near-duplicate pictures appear in more than one split"):
        check_lesions_disjoint(apart)


def test_a_later_source_republishing_an_earlier_one_loses_those_images_and_says_so(tmp_path, capsys):
    from skinscan.data.manifest import _without_copies_across_sources

    first = _manifest(tmp_path, "first", {f"A{i}": lesion_like(i) for i in range(4)})
    second = _manifest(tmp_path, "second", {"B0": republish(lesion_like(1), size=(300, 300)), "B1": lesion_like(60)})
    both = pd.concat([first, second], ignore_index=True)
    kept = _without_copies_across_sources(both, np.repeat([0, 1], [4, 2]))
    assert kept["image_id"].tolist() == ["A0", "A1", "A2", "A3", "B1"]
    assert "second: dropped 1 images" in capsys.readouterr().out


def test_a_manifest_without_hashes_is_not_checked_rather_than_clean_and_csv_keeps_them(tmp_path):
    """An older manifest (no phash column) or a CSV round trip (missing hashes come back as NaN): the near-duplicate
    check says it did not run instead of reporting zero, and hashes written to CSV compare as before."""
    from skinscan.data.manifest import read_manifest_file, write_manifest
    from skinscan.data.splits import overlap_report

    train = _manifest(tmp_path, "train", {f"A{i}": lesion_like(i) for i in range(4)})
    other = _manifest(tmp_path, "other", {"B0": republish(lesion_like(2)), "B1": np.full((40, 40, 3), 9, np.uint8)})
    assert other["phash"].tolist()[1] == ""  # a flat picture has none
    write_manifest(other, str(tmp_path / "other.csv"))
    back = read_manifest_file(str(tmp_path / "other.csv"))
    report = overlap_report(train, back)
    assert report.by_near_duplicate == 1 and report.examples == ["B0"]
    old = overlap_report(train.drop(columns="phash"), back)
    assert old.by_near_duplicate is None and "near-duplicate picture not checked" in old.summary()


def test_evaluation_refuses_to_call_a_republished_training_image_unseen(tmp_path):
    """The leakage guard of `evaluate` and `calibrate --data` counts a training image republished under another id."""
    from skinscan.evaluation.classifier import leakage_check

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    train = _manifest(tmp_path, "train", {f"A{i}": lesion_like(i) for i in range(4)})
    train.assign(split=["train", "train", "val", "test"]).to_parquet(bundle / "train_manifest.parquet")
    clinic = _manifest(tmp_path, "clinic", {"C0": republish(lesion_like(1)), "C1": republish(lesion_like(3))})
    leak = leakage_check(bundle, clinic)
    assert leak["by_near_duplicate"] == 1 and leak["overlapping"] == 1 and leak["examples"] == ["C0"]  # A3: test
