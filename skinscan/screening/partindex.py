"""What an output's parts hold, read once per run in parallel tasks: the resume index and the counts.

`scan` reads the light columns of a group of parts and returns their written keys and counts (a few hundred KB per
group). A run scans the parts already there when it starts (`merge_done` turns the groups into the resume index)
and, at the end, only the parts it wrote: with the groups from the start, `merge_counts` gives the summary. So every
part is read once per run, in `PARTS_PER_SCAN`-part tasks running side by side, and the driver holds only
ObjectRefs and part names. Pure functions: the Ray tasks in `pipeline` call them, and so can tests."""

from __future__ import annotations

from collections import Counter

import numpy as np

from skinscan.data.keys import in_sorted, sorted_unique, uri_keys
from skinscan.screening.writer import drop_transient_errors, list_parts, prune_stale, read_results

PARTS_PER_SCAN = 64
"""Parts per group read in one process (`count_results`): 16,384 rows at the default 256 rows a part."""
MIN_PARTS_PER_SCAN, MAX_PARTS_PER_SCAN = 8, 1024
"""Parts per scan task: the parts are spread over the cluster's CPUs, a task holding at least 8 (below that a task
costs more than its reads) and at most 1,024 (a task holds their light columns: ~30 bytes a row)."""
COUNT_COLUMNS = ["uri_key", "status", "error_type", "predicted_class", "flagged", "metadata_used"]
"""Light columns: the key, not the URI (8 bytes a row, nothing to hash), except in parts older than schema v2."""


def scan(output: str, parts: list[str], set_aside: bool = False) -> dict:
    """Keys (one per row, duplicates kept) and counts of `parts`. Unreadable parts are set aside (`set_aside`, for
    runs that hold the output's lease; their names in "aside") or skipped with a warning."""
    import pyarrow.compute as pc

    aside: list[str] | None = [] if set_aside else None
    t = read_results(output, COUNT_COLUMNS, aside=aside, parts=parts)
    ok = pc.fill_null(pc.equal(t.column("status"), "ok"), False)
    good = t.filter(ok)
    n_ok = good.num_rows

    def tally(column) -> dict:
        return {d["values"]: d["counts"] for d in pc.value_counts(column.drop_null()).to_pylist()}

    stored = t.column("uri_key")
    keys = np.array(pc.fill_null(stored, 0).to_numpy(), np.uint64)  # writable: older parts fill in below
    if stored.null_count:  # parts older than schema v2: their keys from the URIs (the same parts, the same order)
        uris = read_results(output, ["uri"], parts=[p for p in parts if p.rsplit("/", 1)[-1] not in (aside or [])])
        missing = pc.is_null(stored).to_numpy(zero_copy_only=False)
        keys[missing] = uri_keys(uris.column("uri").filter(pc.is_null(stored)).to_pylist())
    return {
        "parts": list(parts),
        "aside": aside or [],
        "keys": np.sort(keys),  # sorted here, in parallel: the merge then only joins sorted runs
        "rows": t.num_rows,
        "ok": n_ok,
        "errors": t.num_rows - n_ok,
        "errors_by_type": tally(t.column("error_type")),
        "per_class": tally(good.column("predicted_class")),
        "flagged": int(pc.sum(good.column("flagged")).as_py() or 0),
        "metadata_used": int(pc.sum(good.column("metadata_used")).as_py() or 0),  # null in parts older than it
    }


def groups(parts: list[str], size: int = PARTS_PER_SCAN, tasks: int | None = None) -> list[list[str]]:
    """`parts` in groups of `size`, or, given the `tasks` that run at once (the cluster's CPUs), spread over that
    many groups within `MIN_PARTS_PER_SCAN`..`MAX_PARTS_PER_SCAN`: every CPU reads, none waits for a second task, and
    a fresh job starts no more worker processes than it has CPUs."""
    if tasks:
        size = min(MAX_PARTS_PER_SCAN, max(MIN_PARTS_PER_SCAN, -(-len(parts) // max(1, tasks))))
    return [parts[i : i + size] for i in range(0, len(parts), size)]


def _joined(scans: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(every key, sorted, duplicates kept; the sorted unique keys) from the scans' sorted runs: a stable sort of
    concatenated runs merges them (timsort), far cheaper than sorting from scratch at millions of keys."""
    if not scans:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    keys = np.sort(np.concatenate([s["keys"] for s in scans]), kind="stable")
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys, keys[first]


def merge_done(*scans: dict) -> tuple[np.ndarray, int, list[str]]:
    """(sorted unique keys of every written input, how many, the parts set aside): the resume index."""
    _, done = _joined(list(scans))
    return done, len(done), [a for s in scans for a in s["aside"]]


def merge_counts(scans: list[dict], input_keys: np.ndarray | None = None, output: str | None = None) -> dict:
    """The summary's counts from scans that together cover every part once, matched against `input_keys` (the
    listing's) when given: inputs without a row (missing) and rows whose input is no longer listed (stale; up to 3
    named, found by reading `output`'s URIs again only when there are any)."""
    written, unique = _joined(scans)
    dup = int(len(written) - len(unique))
    per_class: Counter = Counter()
    errors: Counter = Counter()
    for s in scans:
        per_class.update(s["per_class"])
        errors.update(s["errors_by_type"])
    counts = {
        "rows": int(len(written)),
        "inputs": None,
        "duplicates": dup,
        "complete": dup == 0,
        "ok": sum(s["ok"] for s in scans),
        "errors": sum(s["errors"] for s in scans),
        "errors_by_type": dict(errors.most_common()),
        "per_class": dict(per_class.most_common()),
        "flagged": sum(s["flagged"] for s in scans),
        "metadata_used": sum(s["metadata_used"] for s in scans),
    }
    if input_keys is not None:
        inputs = sorted_unique(input_keys)
        listed = in_sorted(unique, inputs)
        stale = unique[~listed]
        missing = len(inputs) - int(listed.sum())
        counts.update(
            {
                "inputs": int(len(inputs)),
                "missing": int(missing),
                "stale": int(len(stale)),
                "stale_examples": stale_examples(output, stale, scans) if output and len(stale) else [],
                "complete": missing == 0 and dup == 0,
            }
        )
    return counts


def stale_examples(output: str, stale: np.ndarray, scans: list[dict], k: int = 3) -> list[str]:
    """Up to `k` URIs of rows whose key is in `stale` (sorted), read again only from the groups that hold one."""
    found: list[str] = []
    for group in (s["parts"] for s in scans if in_sorted(s["keys"], stale).any()):
        uris = read_results(output, ["uri"], parts=group).column("uri").to_pylist()
        hit = in_sorted(uri_keys(uris), stale)
        found += [u for u, h in zip(uris, hit) if h and u not in found][: k - len(found)]
        if len(found) >= k:
            break
    return found


def count_results(output: str, input_keys: np.ndarray | None = None) -> dict:
    """The counts of everything written so far, in this process, a group at a time (the report, tests; a run uses
    tasks): memory holds one group's rows and 8 bytes a row for the keys."""
    return merge_counts([scan(output, g) for g in groups(list_parts(output))], input_keys, output)


def done_keys(output: str, input_keys: np.ndarray | None = None) -> tuple[np.ndarray, int, list[str]]:
    """(the resume index, how many of `input_keys` are in it, parts set aside as unreadable), in this process."""
    done, n, aside = merge_done(scan(output, list_parts(output), set_aside=True))
    return done, (n if input_keys is None else int(in_sorted(input_keys, done).sum())), aside


# Ray tasks of a run (`screening.pipeline`): defined here so that a worker unpickling one imports only this module
# (numpy, pyarrow, fsspec), not the pipeline's pandas, pydantic and Ray Data: a fresh job's scans start sooner.


def scan_task(output: str, parts: list[str]) -> dict:
    return scan(output, parts, set_aside=True)


def counts_task(output: str, inputs: np.ndarray | None, *scans: dict) -> dict:
    return merge_counts(list(scans), inputs, output)


def prune_task(output: str, parts: list[str], inputs: np.ndarray) -> dict:
    return prune_stale(output, inputs, parts)


def retry_task(output: str, parts: list[str]) -> dict:
    return drop_transient_errors(output, parts)
