"""Parquet parts, written by the Ray workers that made the rows, and the resume index.

Each part is written atomically (temporary file + rename locally, a single PUT on object stores), so a killed run
leaves only complete parts behind, and is named after the inputs it holds (`part_name`): a task that Ray retries
writes the same file again instead of a second copy. Resuming and counting read only light columns, in Ray tasks
(`partindex`), and the inputs are filtered against the resume index in the read tasks: no result row passes
through the driver.
"""

from __future__ import annotations

import hashlib
import io
import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skinscan.data import storage
from skinscan.data.keys import in_sorted, sorted_unique, uri_keys
from skinscan.errors import SkinScanError
from skinscan.screening.schema import SCHEMA, SCHEMA_VERSION

RESULTS_DIR = "results"  # Parquet parts live in OUTPUT/results/ (only Parquet there: pandas/polars/DuckDB read it)


def _fs(output: str):
    fs, root = fsspec.core.url_to_fs(output.rstrip("/") + "/" + RESULTS_DIR)
    return fs, root.rstrip("/")


def list_parts(output: str) -> list[str]:
    """Every part now: the filesystem's listing cache (s3fs keeps one per process) is dropped first, so a count
    after a run sees the parts its workers wrote."""
    fs, root = _fs(output)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    return sorted(
        p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
    )


COMMON_METADATA = "_common_metadata"
"""The Parquet dataset's own metadata file in results/ (schema and key-value metadata; readers that list a folder of
Parquet skip names that start with "_"): what the run concluded about all its rows, which no part can say because
every part is written before the conclusion exists."""


def write_dataset_metadata(output: str, values: dict | None) -> str | None:
    """Write results/_common_metadata: the newest part's schema with `values` (JSON, under "skinscan.<key>") as
    key-value metadata; `values` None removes it (a run that reached no verdict leaves none about rows it added).
    None where there is no part yet."""
    parts = list_parts(output)
    fs, root = _fs(output)
    if values is None:
        if fs.exists(f"{root}/{COMMON_METADATA}"):
            fs.rm(f"{root}/{COMMON_METADATA}")
        return None
    if not parts:
        return None
    with fs.open(parts[-1], "rb") as f:
        schema = pq.read_schema(f)
    meta = dict(schema.metadata or {}) | {f"skinscan.{k}".encode(): json.dumps(v).encode() for k, v in values.items()}
    buf = io.BytesIO()
    pq.write_metadata(schema.with_metadata(meta), buf)
    path = f"{root}/{COMMON_METADATA}"
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


HEAVY_COLUMNS = ("mask_png", "heatmap_png", "thumbnail_jpeg")
"""The image columns: readers that only count or summarise leave them out."""


SET_ASIDE_DIR = "set_aside"
"""Parts that cannot be read (empty, torn, not Parquet) are moved here, out of results/: their inputs count as not
written, so the next run screens them again, and nothing is deleted."""


def set_aside(output: str, part: str, reason: str) -> str:
    """Move an unreadable part to OUTPUT/set_aside/ (a timestamped name: nothing is overwritten); returns its name."""
    import sys
    import time

    fs, _ = _fs(output)
    name = part.rsplit("/", 1)[-1]
    dest_fs, dest_root = fsspec.core.url_to_fs(output.rstrip("/") + "/" + SET_ASIDE_DIR)
    dest_fs.makedirs(dest_root, exist_ok=True)
    try:
        dest_fs.mv(part, f"{dest_root.rstrip('/')}/{name}.{time.strftime('%Y%m%dT%H%M%S')}")
    except FileNotFoundError:  # already moved (another reader of this run, a retried task)
        return name
    print(f"[screen] set aside unreadable part {name} ({reason}); its inputs will be screened again", file=sys.stderr)
    return name


def _unreadable(err: BaseException) -> bool:
    """Whether a read failed on the part's bytes (empty, torn, corrupt) rather than on the way to them: a bad footer
    is ArrowInvalid, a corrupt page an OSError without errno; a lost connection, a timeout, a missing file or a
    refused permission is none of these, and propagates (the part is good; the run fails and is rerun)."""
    if isinstance(err, pa.ArrowInvalid):
        return True
    transient = (ConnectionError, TimeoutError, FileNotFoundError, PermissionError)
    return isinstance(err, OSError) and err.errno is None and not isinstance(err, transient)


def _first_line(err: BaseException) -> str:
    lines = str(err).splitlines()
    return lines[0][:120] if lines else type(err).__name__


def _read_part(fs, part: str, columns: list[str] | None, filter_=None) -> pa.Table:
    """One part with the current schema: columns a part was written without (an older schema version) read as
    null. Raises `Unreadable` for a part that is not readable Parquet; a readable part whose columns do not fit the
    schema is a one-line error naming it (its rows are not thrown away)."""
    import pyarrow.dataset as pads

    try:
        with fs.open(part, "rb") as f:
            pq.read_metadata(f)  # the footer: empty and torn files fail here
    except Exception as err:
        if _unreadable(err):
            raise Unreadable(_first_line(err)) from None
        raise
    try:
        return pads.dataset([part], schema=SCHEMA, format="parquet", filesystem=fs).to_table(
            columns=columns, filter=filter_
        )
    except OSError as err:  # a corrupt page (e.g. "Corrupt snappy compressed data")
        if _unreadable(err):
            raise Unreadable(_first_line(err)) from None
        raise
    except pa.ArrowException as err:  # the footer was read: readable, but of another schema
        raise SkinScanError(f"{part}: its columns do not fit schema v{SCHEMA_VERSION}: {_first_line(err)}") from None


class Unreadable(Exception):
    """A part that cannot be read as Parquet."""


def read_results(
    output: str,
    columns: list[str] | None = None,
    uris: list[str] | None = None,
    aside: list[str] | None = None,
    parts: list[str] | None = None,
) -> pa.Table:
    """Rows written so far: any subset of columns, and only the rows of `uris` when given (pushed down to the
    Parquet reader, so the other rows' images are never read). Parts of older schema versions read with the missing
    columns null. An unreadable part is skipped with a warning, or, with `aside` (runs that hold the output's lease),
    set aside (`set_aside`, its name appended to `aside`) so that its inputs are screened again. `parts`: only
    these (paths as `list_parts` gives them)."""
    import sys

    import pyarrow.dataset as pads

    fs, _ = _fs(output)
    parts = list_parts(output) if parts is None else parts
    empty = SCHEMA.empty_table()
    if not parts:
        return empty.select(columns) if columns else empty
    filter_ = None if uris is None else pads.field("uri").isin(pa.array(list(uris), pa.string()))
    try:  # one scan over every part (parallel reads); part by part only when one of them is unreadable
        return pads.dataset(parts, schema=SCHEMA, format="parquet", filesystem=fs).to_table(
            columns=columns, filter=filter_
        )
    except (pa.ArrowException, OSError):  # find the part, below
        pass
    tables = []
    for part in parts:
        try:
            tables.append(_read_part(fs, part, columns, filter_))
        except Unreadable as err:
            if aside is None:
                print(f"[screen] skipped unreadable part {part.rsplit('/', 1)[-1]} ({err})", file=sys.stderr)
            else:
                aside.append(set_aside(output, part, str(err)))
    return pa.concat_tables(tables) if tables else (empty.select(columns) if columns else empty)


def read_groups(output: str, columns: list[str], rows: int = 32768):
    """Every part's `columns`, as tables of about `rows` rows (whole parts, sized from their footers, read side by
    side), so a reader's memory stays flat however many rows the output holds."""
    from concurrent.futures import ThreadPoolExecutor

    parts = list_parts(output)
    fs, _ = _fs(output)

    def count(part: str) -> int:
        try:
            with fs.open(part, "rb") as f:
                return pq.read_metadata(f).num_rows
        except Exception:  # noqa: BLE001 - an unreadable part: read_results says so when it reads it
            return 0

    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(count, parts))
    group, n = [], 0
    for part, k in zip(parts, sizes):
        group.append(part)
        n += k
        if n >= rows:
            yield read_results(output, columns, parts=group)
            group, n = [], 0
    if group:
        yield read_results(output, columns, parts=group)


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


def write_batch(batch: dict, output: str, host: str | None = None) -> dict:
    """Ray Data task at the end of the pipeline: the batch's rows -> one Parquet part; returns one row of counts
    (all the driver receives). `host`: a local output is written only on that machine (the driver's): a node the
    autoscaler added later would write to its own disk, where nobody would find the rows."""
    import socket

    if host is not None and socket.gethostname() != host:
        raise SkinScanError(
            f"output {output} is a local path of {host}, but this write task runs on {socket.gethostname()}: "
            "use an object-store output (or output_shared=true for a filesystem every node mounts)"
        )
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
    cols["uri_key"] = pa.array(uri_keys([str(u) for u in batch["uri"]]), pa.uint64())
    now = np.datetime64("now", "ms")
    cols["screened_at"] = pa.array(np.full(n, now), type=pa.timestamp("ms", tz="UTC"))
    return pa.table(cols, schema=SCHEMA)


TRANSIENT_ERRORS = ("read_error",)
"""Row errors worth another try (a read that failed or timed out); bytes that did not decode stay errors."""


def _with_keys(fs, part: str, t: pa.Table) -> pa.Table:
    """`t` (read from `part`) with every `uri_key` filled: parts older than schema v2 hold none, so their keys are
    computed from the URIs (the table's own, else read from the part)."""
    stored = t.column("uri_key")
    if not stored.null_count:
        return t
    uris = t.column("uri") if "uri" in t.column_names else _read_part(fs, part, ["uri"]).column("uri")
    return t.set_column(
        t.schema.get_field_index("uri_key"), "uri_key", pa.array(uri_keys(uris.to_pylist()), pa.uint64())
    )


def drop_rows(output: str, columns: list[str], drop, parts: list[str] | None = None, keyed: bool = False) -> dict:
    """Remove the rows for which `drop(table of columns) -> bool mask` holds, rewriting only the parts that hold
    them: the kept rows go to a new part (named after them, written atomically) before the old part is deleted, so
    an interruption can leave a kept row twice (reported as a duplicate; running again fixes it) but never loses
    one. A removed row's input counts as not written: the next run screens it again. `parts`: only these (a
    scan task's group). `keyed`: `drop` reads `uri_key`, filled for parts older than schema v2 (and a rewritten
    part gets its keys stored)."""
    fs, _ = _fs(output)
    rows, rewritten, examples = 0, 0, []
    for part in list_parts(output) if parts is None else parts:
        try:
            t = _read_part(fs, part, ["uri_key", *columns])
            t = _with_keys(fs, part, t) if keyed else t
        except Unreadable as err:  # set aside (its inputs are screened again)
            set_aside(output, part, str(err))
            continue
        except FileNotFoundError:  # a retried task: this part was rewritten (or set aside) by its first try
            continue
        gone = np.asarray(drop(t), bool)
        if not gone.any():
            continue
        try:
            whole = _read_part(fs, part, None)
        except Unreadable as err:  # a corrupt page in a column the narrow read skipped
            set_aside(output, part, str(err))
            continue
        whole = _with_keys(fs, part, whole)
        examples += whole.column("uri").filter(pa.array(gone)).to_pylist()[: 3 - len(examples)]
        kept = whole.filter(pa.array(~gone))
        if kept.num_rows:
            write_part(output, kept)
        fs.rm(part)
        rows, rewritten = rows + int(gone.sum()), rewritten + 1
    return {"rows": rows, "parts": rewritten, "examples": examples}


def prune_stale(output: str, input_keys: np.ndarray, parts: list[str] | None = None) -> dict:
    """Remove the rows whose input is no longer listed (`drop_rows`)."""
    inputs = sorted_unique(input_keys)
    return drop_rows(output, [], lambda t: ~in_sorted(t.column("uri_key").to_numpy(), inputs), parts, keyed=True)


def drop_transient_errors(output: str, parts: list[str] | None = None) -> dict:
    """Remove the error rows whose error was transient (`TRANSIENT_ERRORS`), so that this run screens them again."""
    import pyarrow.compute as pc

    def transient(t: pa.Table):
        hit = pc.is_in(t.column("error_type"), pa.array(TRANSIENT_ERRORS, pa.string()))
        return pc.and_(pc.equal(t.column("status"), "error"), pc.fill_null(hit, False)).to_numpy(zero_copy_only=False)

    return drop_rows(output, ["status", "error_type"], transient, parts)
