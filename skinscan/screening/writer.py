"""Parquet parts, written by the Ray workers that made the rows, and the resume index.

Each part is written atomically (temporary file + rename locally, a single PUT on object stores), so a killed run
leaves only complete parts behind, and is named after the inputs it holds (`part_name`): a task that Ray retries
writes the same file again instead of a second copy. Resuming reads only the `uri` column, in a Ray task
(`done_keys`), and the inputs are filtered against it in the read tasks: no result row passes through the driver.
"""

from __future__ import annotations

import hashlib
import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skinscan.data import storage
from skinscan.data.listing import uri_keys
from skinscan.screening.schema import SCHEMA

RESULTS_DIR = "results"  # Parquet parts live in OUTPUT/results/ (only Parquet there: pandas/polars/DuckDB read it)


def _fs(output: str):
    fs, root = fsspec.core.url_to_fs(output.rstrip("/") + "/" + RESULTS_DIR)
    return fs, root.rstrip("/")


def list_parts(output: str) -> list[str]:
    fs, root = _fs(output)
    if not fs.exists(root):
        return []
    return sorted(
        p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
    )


HEAVY_COLUMNS = ("mask_png", "heatmap_png", "thumbnail_jpeg")
"""The image columns: readers that only count or summarise leave them out."""


def read_results(output: str, columns: list[str] | None = None, uris: list[str] | None = None) -> pa.Table:
    """Rows written so far: any subset of columns, and only the rows of `uris` when given (pushed down to the
    Parquet reader, so the other rows' images are never read)."""
    import pyarrow.dataset as pads

    fs, _ = _fs(output)
    parts = list_parts(output)
    if not parts:
        return SCHEMA.empty_table().select(columns) if columns else SCHEMA.empty_table()
    if uris is None:
        tables = [pq.read_table(p, columns=columns, filesystem=fs) for p in parts]
        return pa.concat_tables(tables, promote_options="default")  # parts written before a column was added
    dataset = pads.dataset(parts, schema=SCHEMA, format="parquet", filesystem=fs)  # missing columns read as null
    return dataset.to_table(columns=columns, filter=pads.field("uri").isin(pa.array(list(uris), pa.string())))


def done_keys(output: str, input_keys: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(sorted keys of every URI already written, how many of `input_keys` are among them). Runs as a Ray task, so
    the written URIs are read where the task runs and travel to the read tasks through the object store."""
    done = np.unique(uri_keys(read_results(output, ["uri"]).column("uri").to_pylist()))
    if input_keys is None:
        return done, len(done)
    return done, int(np.isin(input_keys, done).sum())


def part_name(uris) -> str:
    """`part-<hash of the sorted input URIs>.parquet`: the same rows always land in the same file."""
    return f"part-{hashlib.sha1(chr(10).join(sorted(uris)).encode()).hexdigest()[:24]}.parquet"


def write_part(output: str, table: pa.Table) -> str:
    """Write one part atomically (`storage.write_bytes`); returns its name."""
    name = part_name(table.column("uri").to_pylist())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(storage.join(storage.join(output, RESULTS_DIR), name), buf.getvalue())
    return name


def write_batch(batch: dict, output: str) -> dict:
    """Ray Data task at the end of the pipeline: the batch's rows -> one Parquet part; returns one row of counts
    (all the driver receives)."""
    table = to_table(batch)
    name = write_part(output, table)
    status = np.asarray(batch["status"])
    return {
        "rows": np.array([table.num_rows]),
        "ok": np.array([int((status == "ok").sum())]),
        "flagged": np.array([int(np.asarray(batch["flagged"]).sum())]),
        "part": np.array([name]),
    }


def to_table(batch: dict) -> pa.Table:
    """A stage output batch (numpy dict) -> an Arrow table with the documented schema."""
    n = len(batch["uri"])
    cols = {}
    for field in SCHEMA:
        if field.name == "screened_at":
            continue
        v = batch.get(field.name)
        if v is None:
            cols[field.name] = pa.nulls(n, field.type)
            continue
        arr = np.asarray(v)
        if arr.dtype.kind == "f":
            cols[field.name] = pa.array(arr, type=field.type, from_pandas=True)  # NaN -> null
        else:
            cols[field.name] = pa.array(
                [x.item() if isinstance(x, np.generic) else x for x in arr.tolist()], type=field.type
            )
    now = np.datetime64("now", "ms")
    cols["screened_at"] = pa.array(np.full(n, now), type=pa.timestamp("ms", tz="UTC"))
    return pa.table(cols, schema=SCHEMA)


def prune_stale(output: str, input_keys: np.ndarray) -> dict:
    """Remove the rows whose input is no longer listed, rewriting only the parts that hold them: the kept rows go
    to a new part (named after them, written atomically) before the old part is deleted, so an interruption can
    leave a kept row twice (reported as a duplicate; pruning again fixes it) but never loses one."""
    fs, _ = _fs(output)
    inputs = np.unique(np.asarray(input_keys, np.uint64))
    rows, parts, examples = 0, 0, []
    for part in list_parts(output):
        uris = pq.read_table(part, columns=["uri"], filesystem=fs).column("uri").to_pylist()
        keep = np.isin(uri_keys(uris), inputs)
        if keep.all():
            continue
        examples += [u for u, k in zip(uris, keep) if not k][: 3 - len(examples)]
        kept = pq.read_table(part, filesystem=fs).filter(pa.array(keep))
        if kept.num_rows:
            write_part(output, kept)
        fs.rm(part)
        rows, parts = rows + int((~keep).sum()), parts + 1
    return {"rows": rows, "parts": parts, "examples": examples}
