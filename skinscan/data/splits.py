"""Deterministic, lesion-grouped, class-stratified splits and cross-dataset overlap checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from skinscan.data import phash as ph
from skinscan.errors import DataError


def lesion_groups(df: pd.DataFrame) -> pd.Series:
    """The grouping key: lesion_id where known, else the image itself."""
    lesion = df["lesion_id"] if "lesion_id" in df else pd.Series([None] * len(df), index=df.index)
    return lesion.where(lesion.notna(), "img:" + df["image_id"].astype(str)).astype(str)


def duplicate_groups(df: pd.DataFrame) -> pd.Series:
    """`lesion_groups`, with images that are the same picture (perceptual hash within `phash.MAX_DISTANCE`, any
    flip or turn) joined into one group: a picture in two splits leaks as a lesion in two splits does. Each group is
    named after its smallest member group, so the result does not depend on row order."""
    groups = lesion_groups(df)
    ok = ph.present(df["phash"]) if "phash" in df else np.zeros(len(df), bool)
    if ok.sum() < 2:
        return groups
    pairs, _ = ph.pairs_within(ph.as_bits(df["phash"].to_numpy()[ok]))
    if not len(pairs):
        return groups
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    codes, names = pd.factorize(groups)
    rows = np.flatnonzero(ok)
    a, b = codes[rows[pairs[:, 0]]], codes[rows[pairs[:, 1]]]
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(names),) * 2), directed=False)
    smallest = pd.Series(np.asarray(names, dtype=object)).groupby(component).transform("min").to_numpy()
    return pd.Series(smallest[codes], index=df.index, dtype=object).astype(str)


def _majority(labels: pd.Series) -> str:
    """Most frequent label; ties broken alphabetically so the result never depends on row order."""
    return min(labels.value_counts().items(), key=lambda kv: (-kv[1], kv[0]))[0]


def split_manifest(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int = 0) -> pd.DataFrame:
    """Add a `split` column (train/val/test): whole lesions (and near-duplicate pictures) go to one split, each class
    in proportion.

    Lesions are stratified by their majority label; within each class, lesions are ordered by a seeded
    permutation and assigned to test, then val, until each holds its fraction of that class's images.
    The result depends only on the manifest's content and the seed, not on row order.
    """
    if df["label"].isna().any():
        raise DataError("cannot split: some images have no label")
    if val_fraction + test_fraction >= 1:
        raise DataError("val_fraction + test_fraction must be < 1")
    df = df.copy()
    df["_group"] = duplicate_groups(df)
    groups = df.groupby("_group").agg(n=("image_id", "size"), label=("label", _majority)).sort_index()
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for label in sorted(groups["label"].unique()):
        g = groups[groups["label"] == label]
        order = g.index.to_numpy()[rng.permutation(len(g))]
        total = int(g["n"].sum())
        targets = [("test", test_fraction * total), ("val", val_fraction * total)]
        filled = {"test": 0, "val": 0}
        t = 0
        for gid in order:
            n = int(g.at[gid, "n"])
            while t < len(targets) and filled[targets[t][0]] + n / 2 > targets[t][1]:
                t += 1
            name = targets[t][0] if t < len(targets) else "train"
            if name != "train":
                filled[name] += n
            assign[gid] = name
    df["split"] = df["_group"].map(assign)
    return df.drop(columns="_group")


def split_by_source(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int = 0) -> pd.DataFrame:
    """`split_manifest` within each source, so every source has its own train/val/test in proportion (a source
    is never only training or only test); lesions stay whole, and lesion ids of different sources never merge."""
    if "source" not in df or df["source"].nunique() <= 1:
        return split_manifest(df, val_fraction, test_fraction, seed)
    parts = []
    for src in sorted(df["source"].astype(str).unique()):
        part = df[df["source"].astype(str) == src].copy()
        part["lesion_id"] = part["lesion_id"].map(lambda v, s=src: None if v is None or pd.isna(v) else f"{s}:{v}")
        part = split_manifest(part, val_fraction, test_fraction, seed)
        part["lesion_id"] = df.loc[part.index, "lesion_id"]
        parts.append(part)
    return pd.concat(parts).loc[df.index]


def check_lesions_disjoint(df: pd.DataFrame) -> None:
    groups = duplicate_groups(df)
    per_group = df.assign(_g=groups).groupby("_g")["split"].nunique()
    crossing = per_group[per_group > 1]
    if len(crossing):
        first = df["image_id"][groups == crossing.index[0]].head(3).tolist()
        raise DataError(
            f"{len(crossing)} lesions or near-duplicate pictures appear in more than one split (first: images "
            f"{', '.join(map(str, first))})"
        )


@dataclass
class OverlapReport:
    """Images of `b` that are also in `a` (by image_id, by content hash, by lesion, or as a near-duplicate picture)."""

    n_a: int
    n_b: int
    by_image_id: int
    by_sha256: int
    by_lesion_id: int
    overlapping: int  # images of b overlapping a by any criterion
    examples: list[str] = field(default_factory=list)
    by_near_duplicate: int | None = 0  # None: not checked (a manifest without perceptual hashes)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.overlapping} of {self.n_b} images overlap the other set "
            f"(image_id {self.by_image_id}, content {self.by_sha256}, lesion {self.by_lesion_id}, "
            f"near-duplicate picture {near_text(self.by_near_duplicate)})"
        )


def pictures_comparable(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether both manifests carry perceptual hashes (manifests written before them do not): without, the
    near-duplicate check did not run, which is not the same as finding none."""
    return all("phash" in d and ph.present(d["phash"]).any() for d in (a, b))


NOT_CHECKED = "not checked (a manifest has no perceptual hashes: rebuild it with skinscan data manifest)"


def near_text(count: int | None) -> str:
    return NOT_CHECKED if count is None else str(count)


def overlap_mask(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Boolean masks over `b`: shares image_id, shares content hash, shares lesion_id with `a`, is a near-duplicate
    picture of one of `a`'s (perceptual hash, where both manifests have one)."""
    by_id = b["image_id"].isin(set(a["image_id"]))
    hashes_a = {h for h in a.get("sha256", pd.Series(dtype=str)).dropna() if h}
    by_hash = b.get("sha256", pd.Series([""] * len(b), index=b.index)).isin(hashes_a) & (b.get("sha256", "") != "")
    lesions_a = {x for x in a.get("lesion_id", pd.Series(dtype=str)).dropna()}
    by_lesion = b.get("lesion_id", pd.Series([None] * len(b), index=b.index)).isin(lesions_a)
    by_near = pd.Series(False, index=b.index)
    if pictures_comparable(a, b):
        in_a, in_b = ph.present(a["phash"]), ph.present(b["phash"])
        d = ph.distances(ph.as_bits(a["phash"].to_numpy()[in_a]), ph.as_bits(b["phash"].to_numpy()[in_b]))
        by_near[in_b] = d <= ph.MAX_DISTANCE
    return by_id, by_hash, by_lesion, by_near


def any_overlap(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """Images of `b` overlapping `a` by any criterion of `overlap_mask`."""
    by_id, by_hash, by_lesion, by_near = overlap_mask(a, b)
    return by_id | by_hash | by_lesion | by_near


def overlap_report(a: pd.DataFrame, b: pd.DataFrame, max_examples: int = 5) -> OverlapReport:
    by_id, by_hash, by_lesion, by_near = overlap_mask(a, b)
    anym = by_id | by_hash | by_lesion | by_near
    return OverlapReport(
        n_a=len(a),
        n_b=len(b),
        by_image_id=int(by_id.sum()),
        by_sha256=int(by_hash.sum()),
        by_lesion_id=int(by_lesion.sum()),
        overlapping=int(anym.sum()),
        examples=b["image_id"][anym].head(max_examples).tolist(),
        by_near_duplicate=int(by_near.sum()) if pictures_comparable(a, b) else None,
    )


def remove_overlap(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, OverlapReport]:
    """Drop from `a` (e.g. ISIC 2019 training) every image that overlaps `b` (e.g. a HAM10000 test set)."""
    report = overlap_report(b, a)
    return a[~any_overlap(b, a)].reset_index(drop=True), report
