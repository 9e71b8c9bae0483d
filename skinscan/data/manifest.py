"""Manifests: one table of images from any supported source.

Columns (see `MANIFEST_COLUMNS`): image_id, uri, label (ISIC 2019 class or null), lesion_id (or null),
source, sha256 (of the file's bytes), phash (a perceptual hash of its picture, `skinscan.data.phash`). Readers:

- `read_isic2019`: the official ISIC 2019 training ground-truth CSV (+ optional metadata CSV for lesion_id)
- `read_ham10000`: the official HAM10000_metadata.csv (+ optional ISIC 2019 ground truth for AK vs SCC)
- `read_folder`: a folder-per-class tree (folder names are ISIC classes or HAM10000 dx codes)
- `read_unlabeled`: every file in a folder or archive
- `build_manifest(DataConfig)`: picks the reader from the source (auto-detection)
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from skinscan.config import DataConfig
from skinscan.data import storage
from skinscan.data.taxonomy import HAM_DX_TO_ISIC, ISIC2019_CLASSES, ISIC2019_OUTPUT_COLUMNS, ham_dx_to_isic
from skinscan.errors import DataError, ImageDecodeError

MANIFEST_COLUMNS = ["image_id", "uri", "label", "lesion_id", "source", "sha256", "phash"]
METADATA_COLUMNS = ["age", "sex", "site"]
"""Optional patient metadata kept where the source has it (HAM10000 `localization`, ISIC `anatom_site_general` and
`age_approx` are renamed): evaluation breaks figures down by them."""
OPTIONAL_TEXT_COLUMNS = ["label", "lesion_id", "source", "source_split", "mask_uri", "sex", "site"]
"""Text fields a row may lack. They are None wherever a stage reads them (see `missing_as_none`)."""
ISIC_GT_NAME = "ISIC_2019_Training_GroundTruth.csv"
ISIC_META_NAME = "ISIC_2019_Training_Metadata.csv"
HAM_META_NAME = "HAM10000_metadata.csv"


def _read_csv(uri: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(storage.read_bytes(uri)))
    except FileNotFoundError:
        raise DataError(f"CSV not found: {uri}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{uri}: not a readable CSV ({str(err).splitlines()[0]})") from None


def _require(df: pd.DataFrame, cols: list[str], uri: str, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{uri}: not a {what} file, missing columns {missing}")


def fingerprint_uris(uris: list[str], threads: int = 8) -> tuple[list[str], list[str]]:
    """(sha256 of each file's bytes, perceptual hash of its picture), one read per file; "" where the file is
    missing (sha256) or does not decode (phash: the image is refused later, where it is read for training)."""
    from skinscan.data.phash import phash_bytes

    def one(u: str) -> tuple[str, str]:
        try:
            data = storage.read_bytes(u)
        except FileNotFoundError:
            return "", ""
        try:
            picture = phash_bytes(data, u)
        except ImageDecodeError:
            picture = ""
        return hashlib.sha256(data).hexdigest(), picture

    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(one, uris))
    return [f[0] for f in found], [f[1] for f in found]


def _image_index(root: str) -> dict[str, str]:
    """image_id -> uri for every file under `root` (folder or archive)."""
    index: dict[str, str] = {}
    for uri in storage.list_files(root):
        index.setdefault(storage.stem(uri), uri)
    return index


def _default_images_root(csv_uri: str) -> str:
    """`images/` beside the CSV when it exists (folder or archive member folder), else the CSV's folder."""
    par = storage.parent(csv_uri)
    cand = storage.join(par, "images")
    try:
        if storage.split_chained(cand):
            return cand if storage.list_files(cand) else par
        return cand if storage.is_dir(cand) else par
    except Exception:  # noqa: BLE001 - an unreadable candidate just means "not there"
        return par


def _attach_uris(df: pd.DataFrame, images: str, csv_uri: str) -> pd.DataFrame:
    chained = storage.split_chained(images)
    if chained:  # images inside an archive: list the archive once, keep members under the folder
        kind, member, archive = chained
        prefix = member.rstrip("/") + "/" if member else ""
        index = {
            storage.stem(u): u for u in storage.list_files(archive) if storage.split_chained(u)[1].startswith(prefix)
        }
    else:
        index = _image_index(images)
    uris = df["image_id"].map(index)
    missing = df["image_id"][uris.isna()]
    if len(missing):
        raise DataError(
            f"{csv_uri}: {len(missing)} of {len(df)} images not found under {images} "
            f"(first: {', '.join(missing.head(3))})"
        )
    df = df.copy()
    df["uri"] = uris
    return df


def _finish(df: pd.DataFrame, source: str, hash_bytes: bool) -> pd.DataFrame:
    df = df.copy()
    df["source"] = source
    for col in ("label", "lesion_id"):
        if col not in df:
            df[col] = None
    df["sha256"], df["phash"] = fingerprint_uris(df["uri"].tolist()) if hash_bytes else ("", "")
    df = df[MANIFEST_COLUMNS + [c for c in [*METADATA_COLUMNS, "source_split"] if c in df]].reset_index(drop=True)
    df = typed_metadata(missing_as_none(df))
    if df["image_id"].duplicated().any():
        dup = df["image_id"][df["image_id"].duplicated()].iloc[0]
        raise DataError(f"{source}: duplicate image_id {dup}")
    return df


def text_or_none(values: pd.Series) -> pd.Series:
    """The column as Python objects with None where a value is missing. pandas 3 stores text as its string dtype,
    whose missing value is NaN, a float (`if uri:` is then true); pandas 2 gives None or NaN depending on the path."""
    return values.astype(object).where(values.notna(), None)


def missing_as_none(df: pd.DataFrame) -> pd.DataFrame:
    """The one place where optional text fields (`OPTIONAL_TEXT_COLUMNS`) become None when missing: every reader,
    the union of sources and the training rows pass through it, on pandas 2 and 3 alike."""
    for col in OPTIONAL_TEXT_COLUMNS:
        if col in df:
            df[col] = text_or_none(df[col])
    return df


def typed_metadata(df: pd.DataFrame) -> pd.DataFrame:
    """One type per metadata column whatever the source wrote (ISIC 2017 has ages like "unknown"): age a number
    (NaN where unknown), sex and site text (None where unknown). Sources then concatenate and write to Parquet."""
    if "age" in df:
        df["age"] = pd.to_numeric(df["age"], errors="coerce")
    for col in ("sex", "site", "source_split"):
        if col in df:
            text = text_or_none(df[col])
            df[col] = [None if v is None or str(v).strip().lower() in ("", "unknown", "nan") else str(v) for v in text]
    return df


def isic_groundtruth_labels(gt: pd.DataFrame, uri: str) -> pd.Series:
    """Label per image from the one-hot ISIC 2019 columns; exactly one positive per row."""
    _require(gt, ["image", *ISIC2019_CLASSES], uri, "ISIC 2019 ground-truth")
    cols = [c for c in ISIC2019_OUTPUT_COLUMNS if c in gt.columns]
    onehot = gt[cols].to_numpy(dtype=float)
    bad = np.where(np.abs(onehot.sum(axis=1) - 1.0) > 1e-6)[0]
    if len(bad):
        raise DataError(f"{uri}: row for {gt['image'].iloc[bad[0]]} does not have exactly one positive class")
    return pd.Series(np.array(cols)[onehot.argmax(axis=1)], index=gt.index)


def read_isic2019(
    gt_csv: str, images: str | None = None, metadata: str | None = None, hash_bytes: bool = True
) -> pd.DataFrame:
    gt = _read_csv(gt_csv)
    df = pd.DataFrame({"image_id": gt["image"].astype(str), "label": isic_groundtruth_labels(gt, gt_csv)})
    if metadata:
        meta = _read_csv(metadata)
        _require(meta, ["image"], metadata, "ISIC metadata")
        renames = {"image": "image_id", "age_approx": "age", "age_approximate": "age", "anatom_site_general": "site"}
        meta = meta.rename(columns=renames)
        if "lesion_id" not in meta:  # ISIC 2017's metadata has none: each image is its own lesion
            meta["lesion_id"] = None
        if "split" in meta:  # a data set's own partition (ISIC 2017: training / validation), not SkinScan's split
            meta = meta.rename(columns={"split": "source_split"})
        keep = ["image_id", "lesion_id", *(c for c in [*METADATA_COLUMNS, "source_split"] if c in meta)]
        df = df.merge(meta[keep], on="image_id", how="left")
    df = _attach_uris(df, images or _default_images_root(gt_csv), gt_csv)
    return _finish(df, "isic2019", hash_bytes)


def read_ham10000(
    meta_csv: str, images: str | None = None, isic_groundtruth: str | None = None, hash_bytes: bool = True
) -> pd.DataFrame:
    meta = _read_csv(meta_csv)
    _require(meta, ["lesion_id", "image_id", "dx"], meta_csv, "HAM10000 metadata")
    isic: dict[str, str] = {}
    if isic_groundtruth:
        gt = _read_csv(isic_groundtruth)
        isic = dict(zip(gt["image"].astype(str), isic_groundtruth_labels(gt, isic_groundtruth)))
    bad = sorted(set(meta["dx"].str.lower()) - set(HAM_DX_TO_ISIC))
    if bad:
        raise DataError(f"{meta_csv}: unknown dx codes {bad}; expected {sorted(HAM_DX_TO_ISIC)}")
    labels = [ham_dx_to_isic(dx, isic.get(i)) for dx, i in zip(meta["dx"], meta["image_id"].astype(str))]
    df = pd.DataFrame({"image_id": meta["image_id"].astype(str), "label": labels, "lesion_id": meta["lesion_id"]})
    for src, col in (("age", "age"), ("sex", "sex"), ("localization", "site")):
        if src in meta:
            df[col] = meta[src].to_numpy()
    df = _attach_uris(df, images or _default_images_root(meta_csv), meta_csv)
    return _finish(df, "ham10000", hash_bytes)


def _folder_label(name: str) -> str | None:
    up = name.upper()
    if up in ISIC2019_CLASSES:
        return up
    if name.lower() in HAM_DX_TO_ISIC:
        return ham_dx_to_isic(name)
    return None


def _member_path(uri: str, root: str) -> str:
    chained = storage.split_chained(uri)
    if chained:
        return chained[1]
    return uri[len(storage.normalize(root)) :].lstrip("/")


def read_folder(root: str, hash_bytes: bool = True) -> pd.DataFrame:
    """A folder-per-class tree: <root>/<CLASS>/<image>. Class folders: ISIC 2019 names or HAM10000 dx codes."""
    rows = []
    for uri in storage.list_files(root):
        parts = _member_path(uri, root).split("/")
        if len(parts) < 2:
            raise DataError(f"{root}: {parts[-1]} is not inside a class folder")
        label = _folder_label(parts[-2])
        if label is None:
            raise DataError(
                f"{root}: folder {parts[-2]!r} is not a class; use ISIC 2019 names {list(ISIC2019_CLASSES)} "
                f"or HAM10000 dx codes"
            )
        rows.append({"image_id": storage.stem(uri), "uri": uri, "label": label})
    if not rows:
        raise DataError(f"{root}: no images found")
    return _finish(pd.DataFrame(rows), "folder", hash_bytes)


def unique_ids(uris: list[str]) -> list[str]:
    """File stems as image ids; a repeated stem (a.jpg and sub/a.jpg) gets a short hash of its URI appended."""
    seen: dict[str, int] = {}
    out = []
    for u in uris:
        i = storage.stem(u)
        n = seen.get(i, 0)
        seen[i] = n + 1
        out.append(i if n == 0 else f"{i}~{hashlib.sha1(u.encode()).hexdigest()[:8]}")
    return out


def read_unlabeled(root: str, hash_bytes: bool = True) -> pd.DataFrame:
    uris = storage.list_files(root)
    if not uris:
        raise DataError(f"{root}: no files found")
    return _finish(pd.DataFrame({"image_id": unique_ids(uris), "uri": uris}), "unlabeled", hash_bytes)


def read_manifest_file(uri: str) -> pd.DataFrame:
    """A SkinScan manifest written by `write_manifest` (CSV or Parquet)."""
    if uri.lower().endswith(".parquet"):
        try:
            df = pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
        except FileNotFoundError:
            raise DataError(f"manifest not found: {uri}") from None
    else:
        df = _read_csv(uri)
    _require(df, ["image_id", "uri"], uri, "SkinScan manifest")
    for col in MANIFEST_COLUMNS:
        if col not in df:
            df[col] = None
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return typed_metadata(missing_as_none(df[MANIFEST_COLUMNS + extra].copy()))


def write_manifest(df: pd.DataFrame, path: str) -> str:
    if path.lower().endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def _csv_kind(uri: str) -> str:
    head = _read_csv(uri).columns
    if "image" in head and "MEL" in head:
        return "isic2019"
    if "dx" in head and "lesion_id" in head:
        return "ham10000"
    if "uri" in head and "image_id" in head:
        return "manifest"
    raise DataError(f"{uri}: unrecognised CSV (expected ISIC 2019 ground truth, HAM10000 metadata or a manifest)")


def _find_sidecar(root: str, name: str) -> str | None:
    for u in storage.list_files(root, include_sidecars=True):
        if posixpath.basename(storage.split_chained(u)[1] if storage.split_chained(u) else u) == name:
            return u
    return None


def build_manifest(cfg: DataConfig) -> pd.DataFrame:
    """Read `cfg.source` with the right reader (auto-detected unless `cfg.format` says)."""
    src = storage.normalize(cfg.source) if cfg.source else ""
    if not src:
        raise DataError("data.source is empty: give a CSV, folder or archive")
    if not storage.exists(src):
        raise DataError(f"data source not found: {src}")
    fmt = cfg.format
    low = src.lower()
    is_table = low.endswith((".csv", ".parquet"))
    if fmt == "auto":
        if low.endswith(".parquet"):
            fmt = "manifest"
        elif is_table:
            fmt = _csv_kind(src)
        else:  # folder or archive: look for a known CSV inside it, else class folders, else unlabeled
            gt = _find_sidecar(src, ISIC_GT_NAME)
            ham = _find_sidecar(src, HAM_META_NAME)
            if ham:
                return read_ham10000(ham, cfg.images, cfg.isic_groundtruth or gt, cfg.hash)
            if gt:
                meta = cfg.metadata or _find_sidecar(src, ISIC_META_NAME)
                return read_isic2019(gt, cfg.images, meta, cfg.hash)
            try:
                return read_folder(src, cfg.hash)
            except DataError:
                return read_unlabeled(src, cfg.hash)
    if fmt == "isic2019":
        meta = cfg.metadata
        if meta is None:  # the ISIC 2019 metadata (lesion ids) beside the ground truth, when present
            cand = storage.join(storage.parent(src), ISIC_META_NAME)
            meta = cand if storage.exists(cand) else None
        return read_isic2019(src, cfg.images, meta, cfg.hash)
    if fmt == "ham10000":
        gt = cfg.isic_groundtruth
        if gt is None:  # the ISIC 2019 ground truth beside the metadata, when present
            cand = storage.join(storage.parent(src), ISIC_GT_NAME)
            gt = cand if storage.exists(cand) else None
        return read_ham10000(src, cfg.images, gt, cfg.hash)
    if fmt == "manifest":
        return read_manifest_file(src)
    if fmt == "folder":
        return read_folder(src, cfg.hash)
    return read_unlabeled(src, cfg.hash)


def build_sources(configs: list[DataConfig]) -> pd.DataFrame:
    """Several data sources as one manifest: each read by its reader, filtered (`where`), named (`name` -> the
    `source` column). An image id found in two sources is refused: the same image twice could land in two splits.
    A picture of a later source that is one of an earlier source's under another id (same bytes, or a near-duplicate
    by perceptual hash: another size, encoding, flip) is dropped, and said: each source is split on its own, so both
    copies could otherwise land in different splits."""
    frames = []
    for cfg in configs:
        df = build_manifest(cfg)
        for col, values in cfg.where.items():
            if col not in df:
                raise DataError(f"{cfg.source}: where: no column {col!r} (columns: {', '.join(df.columns)})")
            df = df[df[col].astype(str).isin([str(v) for v in values])]
        if cfg.name:
            df = df.assign(source=cfg.name)
        frames.append(df.reset_index(drop=True))
    df = missing_as_none(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"image {dup.iloc[0]} (and {len(dup) - 1} more) is in two sources; remove the overlap")
    sizes = [len(f) for f in frames]
    return _without_copies_across_sources(df, np.repeat(np.arange(len(sizes)), sizes))


def _without_copies_across_sources(df: pd.DataFrame, frame: np.ndarray) -> pd.DataFrame:
    """`df` less the rows of each later source (`frame`: which source each row came from, in config order) that
    are the same picture as a kept row of an earlier source, by bytes or perceptual hash."""
    from skinscan.data.splits import overlap_mask

    keep = np.ones(len(df), bool)
    for k in range(1, int(frame.max(initial=0)) + 1):
        earlier, later = df[(frame < k) & keep], df[frame == k]
        _, by_hash, _, by_near = overlap_mask(earlier, later)
        copies = (by_hash | by_near).to_numpy()
        if copies.any():
            first = ", ".join(later["image_id"][copies].head(3).astype(str))
            print(
                f"[data] {later['source'].iloc[0]}: dropped {int(copies.sum())} images that are pictures of an "
                f"earlier source under another id (same bytes {int(by_hash.sum())}, near-duplicate "
                f"{int((by_near & ~by_hash).sum())}; first: {first})"
            )
            keep[np.flatnonzero(frame == k)[copies]] = False
    return df[keep].reset_index(drop=True)


def class_counts(df: pd.DataFrame) -> dict[str, int]:
    counts = df["label"].value_counts()
    order = [c for c in ISIC2019_OUTPUT_COLUMNS if c in counts.index]
    return {c: int(counts[c]) for c in order}
