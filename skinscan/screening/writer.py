"""Parquet part writer (driver side) and the resume index. Each part is written atomically (temporary file +
rename locally, a single PUT on object stores), so a killed run leaves only complete parts behind."""

from __future__ import annotations

import io
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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


def read_results(output: str, columns: list[str] | None = None) -> pa.Table:
    """All rows written so far (any subset of columns)."""
    fs, _ = _fs(output)
    parts = list_parts(output)
    if not parts:
        return SCHEMA.empty_table().select(columns) if columns else SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, columns=columns, filesystem=fs) for p in parts])


def done_uris(output: str) -> set[str]:
    return set(read_results(output, ["uri"]).column("uri").to_pylist())


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


class PartWriter:
    """Buffers rows and writes `part-<run>-<seq>.parquet` files of about `rows_per_part` rows."""

    def __init__(self, output: str, rows_per_part: int = 256):
        self.fs, self.root = _fs(output)
        self.fs.makedirs(self.root, exist_ok=True)
        self.rows_per_part = rows_per_part
        self.run = uuid.uuid4().hex[:8]
        self.seq = 0
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.written = 0

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffer)
        name = f"{self.root}/part-{self.run}-{self.seq:05d}.parquet"
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        if self.fs.protocol in ("file", "local") or "file" in self.fs.protocol:
            tmp = name + ".tmp"
            with self.fs.open(tmp, "wb") as f:
                f.write(buf.getvalue())
            self.fs.mv(tmp, name)
        else:
            self.fs.pipe_file(name, buf.getvalue())  # one PUT: atomic on object stores
        self.seq += 1
        self.written += table.num_rows
        self.buffer, self.buffered = [], 0
