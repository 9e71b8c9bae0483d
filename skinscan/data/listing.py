"""Listing the inputs of a screening run in pieces, so that no one process ever holds the whole list.

`plan_units` looks only at the top of the input (cheap, on the driver) and returns listing units: each archive, each
top-level subfolder of a local folder and the folder's own files, one object-store folder (S3: listed page by page
in its task; GCS, Azure: `fs.find` in its task; the driver never lists it), or one manifest. `iter_unit` lists one
unit (in a Ray read task) and yields Arrow tables of `image_id`, `uri` and `key` (the 64-bit resume key of the URI),
with `age`, `sex` and `site` where a manifest has them, `chunk_rows` at a time. Image ids are file stems, made
unique within a unit as `read_unlabeled` does (object-store folders: the key below the folder, without extension).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import pandas as pd
import pyarrow as pa

from skinscan.data import storage
from skinscan.data.keys import uri_keys
from skinscan.data.manifest import METADATA_COLUMNS, build_manifest, typed_metadata, unique_ids
from skinscan.errors import DataError

LISTING_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("key", pa.uint64()),
        # patient metadata, from a manifest that has the columns (null elsewhere): for models that read it
        ("age", pa.float64()),
        ("sex", pa.string()),
        ("site", pa.string()),
    ]
)
MANIFEST_SUFFIXES = (".csv", ".parquet")
MAX_LISTING_TASKS = 32
"""Listing tasks of one run at once (the streamed read and the key listing alike): they take no CPU share, so
nothing else would bound them (a folder of thousands of subfolders)."""


@dataclass(frozen=True)
class Unit:
    """One piece of listing work. kind: archive (target: archive URI, prefix: folder inside it or ""), tree (a
    folder, recursively), files (a folder's own files), file (one input), manifest (a CSV/Parquet table)."""

    kind: str  # archive | tree | files | file | prefix | manifest
    target: str
    prefix: str = ""
    include_masks: bool = False  # list mask files (`storage.is_mask`) as inputs too


def _subfolders_and_files(uri: str, include_masks: bool = False) -> tuple[list[str], bool]:
    """(subfolder paths, whether the folder holds files itself) of a local folder, scanned entry by entry, so a flat
    folder of a million files costs the driver no memory. A `masks/` subfolder is left out unless `include_masks`."""
    skip = {"__MACOSX"} if include_masks else {"__MACOSX", storage.MASK_FOLDER}
    dirs, has_files = [], False
    with os.scandir(uri) as it:
        for e in it:
            if e.is_dir():
                if e.name.lower() not in {s.lower() for s in skip}:  # hidden files skipped, not folders
                    dirs.append(e.path)
            else:
                has_files = True
    return sorted(dirs), has_files


def plan_units(uri: str, include_masks: bool = False) -> list[Unit]:
    """The listing units of an input: a manifest, an archive (or a folder inside one), or a folder/prefix. Masks
    (`storage.is_mask`) are not inputs unless `include_masks`; a manifest lists exactly its rows."""
    uri = storage.normalize(uri)
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        if not storage.exists(uri):
            raise DataError(f"manifest not found: {uri}")
        return [Unit("manifest", uri)]
    chained = storage.split_chained(uri)
    if chained:
        _, member, archive = chained
        if not storage.exists(archive):
            raise DataError(f"archive not found: {archive}")
        return [Unit("archive", storage.normalize(archive), member.strip("/") + "/", include_masks)]
    if storage.archive_kind(uri) is not None:
        if not storage.exists(uri):
            raise DataError(f"archive not found: {uri}")
        return [Unit("archive", uri, include_masks=include_masks)]
    if "://" in uri and _holds_objects(uri):  # an object-store folder: one unit, paged in its read task
        return [Unit("prefix", uri, include_masks=include_masks)]
    if not storage.exists(uri):
        raise DataError(f"input not found: {uri}")
    if not storage.is_dir(uri):
        return [Unit("file", uri)]
    dirs, has_files = _subfolders_and_files(uri, include_masks)
    return ([Unit("files", uri, include_masks=include_masks)] if has_files else []) + [
        Unit("tree", d, include_masks=include_masks) for d in dirs
    ]


def _holds_objects(uri: str) -> bool:
    """Whether an object-store URI is a folder with something in it, from one request for one key (s3fs's `isdir`
    lists the whole folder: at 200,000 objects, 13 s of the driver's CPU, measured)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not hasattr(fs, "call_s3"):
        return fs.isdir(path)
    bucket, _, prefix = path.rstrip("/").partition("/")
    page = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    return bool(page.get("KeyCount") or page.get("Contents"))


def _object_names(fs, root: str) -> Iterator[str]:
    """Every object under `root` (bucket/prefix/): on S3 a page of 1,000 keys a request, yielded as it arrives;
    other stores (GCS, Azure) through `fs.find`, in this task."""
    if not hasattr(fs, "call_s3"):
        yield from sorted(fs.find(root))
        return
    bucket, _, prefix = root.partition("/")
    token: str | None = None
    while True:
        page = fs.call_s3(
            "list_objects_v2",
            Bucket=bucket,
            Prefix=prefix,
            MaxKeys=1000,
            **({"ContinuationToken": token} if token else {}),  # s3fs adds its request settings (requester pays)
        )
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield f"{bucket}/{obj['Key']}"
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _iter_prefix(uri: str, chunk_rows: int, include_masks: bool) -> Iterator[pa.Table]:
    """An object-store prefix, recursively, `chunk_rows` objects a table as the pages arrive: the task holds one
    chunk of names, never the whole listing. Image ids are the keys below the prefix without their extension
    (`sub/IMG_1`; in a flat prefix the file stem): unique without remembering the ids already given."""
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    root = path.rstrip("/") + "/"
    ids: list[str] = []
    uris: list[str] = []
    for name in _object_names(fs, root):
        relative = name[len(root) :]
        if storage.keep_listed(name, include_masks, relative):
            uris.append(f"{protocol}://{name}")
            ids.append(posixpath.splitext(relative)[0])
        if len(uris) == chunk_rows:
            yield _table(ids, uris)
            ids, uris = [], []
    if uris:
        yield _table(ids, uris)


def _table(ids: list[str], uris: list[str], meta: dict[str, list] | None = None) -> pa.Table:
    meta = meta or {}
    cols = {"image_id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string()), "key": uri_keys(uris)}
    for name in METADATA_COLUMNS:
        field = LISTING_SCHEMA.field(name)
        cols[name] = pa.array(meta[name], field.type) if name in meta else pa.nulls(len(uris), field.type)
    return pa.table(cols, schema=LISTING_SCHEMA)


def _chunks(
    uris: list[str], chunk_rows: int, ids: list[str] | None = None, meta: pd.DataFrame | None = None
) -> Iterator[pa.Table]:
    ids = unique_ids(uris) if ids is None else ids
    for i in range(0, len(uris), chunk_rows):
        part = None if meta is None else _meta_lists(meta.iloc[i : i + chunk_rows])
        yield _table(ids[i : i + chunk_rows], uris[i : i + chunk_rows], part)


def _meta_lists(df: pd.DataFrame) -> dict[str, list]:
    """The metadata columns a frame has, typed for the listing (unknown: None)."""
    df = typed_metadata(df[[c for c in METADATA_COLUMNS if c in df]].copy())
    return {c: [None if pd.isna(v) else v for v in df[c].tolist()] for c in df.columns}


def _is_skinscan_manifest(uri: str) -> bool:
    if uri.lower().endswith(".parquet"):
        return True
    with fsspec.open(uri, "rb") as f:
        head = f.readline().decode("utf-8", "replace").strip().split(",")
    return "uri" in head and "image_id" in head


def _iter_manifest(uri: str, chunk_rows: int) -> Iterator[pa.Table]:
    """A SkinScan manifest, streamed: only `image_id` and `uri` are read, `chunk_rows` at a time. Other tables
    (ISIC 2019 ground truth, HAM10000 metadata) go through their reader, which resolves image names to files."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not _is_skinscan_manifest(uri):
        from skinscan.config import DataConfig

        df = build_manifest(DataConfig(source=uri, hash=False))
        yield from _chunks(df["uri"].astype(str).tolist(), chunk_rows, df["image_id"].astype(str).tolist(), df)
        return
    with fsspec.open(uri, "rb") as f:
        if uri.lower().endswith(".parquet"):
            pf = pq.ParquetFile(f)
            cols = ["image_id", "uri", *(c for c in METADATA_COLUMNS if c in pf.schema_arrow.names)]
            batches = pf.iter_batches(batch_size=chunk_rows, columns=cols)
        else:
            head = f.readline().decode("utf-8", "replace").strip().split(",")
            f.seek(0)
            cols = ["image_id", "uri", *(c for c in METADATA_COLUMNS if c in head)]
            batches = pacsv.open_csv(
                f,
                read_options=pacsv.ReadOptions(block_size=64 * chunk_rows),
                convert_options=pacsv.ConvertOptions(include_columns=cols, column_types={c: pa.string() for c in cols}),
            )
        for batch in batches:
            for k in range(0, batch.num_rows, chunk_rows):
                b = batch.slice(k, chunk_rows)
                ids, uris = b.column("image_id").to_pylist(), b.column("uri").to_pylist()
                if any(u is None for u in uris):
                    raise DataError(f"{uri}: empty uri in the manifest")
                meta = _meta_lists(b.select(cols[2:]).to_pandas()) if len(cols) > 2 else None
                yield _table([i if i is not None else storage.stem(u) for i, u in zip(ids, uris)], uris, meta)


def iter_unit(unit: Unit, chunk_rows: int = 4096) -> Iterator[pa.Table]:
    """List one unit, `chunk_rows` inputs per table."""
    if unit.kind == "manifest":
        yield from _iter_manifest(unit.target, chunk_rows)
        return
    if unit.kind == "prefix":
        yield from _iter_prefix(unit.target, chunk_rows, unit.include_masks)
        return
    if unit.kind == "file":
        uris = [unit.target]
    elif unit.kind == "archive":
        target = storage.join(unit.target, unit.prefix.rstrip("/")) if unit.prefix else unit.target
        uris = storage.list_files(target, include_masks=unit.include_masks)
    else:
        uris = storage.list_files(unit.target, recursive=unit.kind == "tree", include_masks=unit.include_masks)
    yield from _chunks(uris, chunk_rows)


def list_all(uri: str, include_masks: bool = False) -> pa.Table:
    """Every input of `uri` in one table (tests and small tools; the screening job streams `iter_unit`)."""
    tables = [t for u in plan_units(uri, include_masks) for t in iter_unit(u)]
    return pa.concat_tables(tables) if tables else LISTING_SCHEMA.empty_table()
