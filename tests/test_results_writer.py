"""Result parts written by workers: one atomic part per batch, named after its inputs (a retried task rewrites the
same file), the resume index built from the `uri` column only, and the read-task filter that uses it."""

from __future__ import annotations

import numpy as np
import pytest

from skinscan.data.keys import uri_keys
from skinscan.screening.partindex import done_keys
from skinscan.screening.writer import list_parts, read_results, write_batch


def _batch(uris: list[str]) -> dict:
    n = len(uris)
    obj = np.empty(n, dtype=object)
    obj[:] = uris
    return {
        "image_id": obj.copy(),
        "uri": obj,
        "status": np.array(["ok"] * (n - 1) + ["error"], dtype=object),
        "flagged": np.array([True] + [False] * (n - 1)),
        "confidence": np.linspace(0.5, 0.9, n).astype(np.float32),
        "node_id": np.array(["node-a"] * n, dtype=object),
    }


def test_a_retried_write_lands_in_the_same_part(tmp_path):
    out = str(tmp_path / "o")
    first = write_batch(_batch(["u1", "u2", "u3"]), out)
    again = write_batch(_batch(["u3", "u1", "u2"]), out)  # a retried task, rows in another order
    assert first["part"][0] == again["part"][0] and len(list_parts(out)) == 1
    assert (first["rows"][0], first["ok"][0], first["flagged"][0]) == (3, 2, 1)
    write_batch(_batch(["u4", "u5"]), out)
    t = read_results(out, ["uri", "node_id"]).to_pandas()
    assert sorted(t["uri"]) == ["u1", "u2", "u3", "u4", "u5"] and set(t["node_id"]) == {"node-a"}
    assert not list((tmp_path / "o" / "results").glob("*.tmp"))


def test_resume_index_and_read_task_filter(tmp_path, monkeypatch):
    import skinscan.screening.pipeline as pipeline

    out = str(tmp_path / "o")
    write_batch(_batch(["a", "b", "c"]), out)
    done, n_inputs_done, _ = done_keys(out, uri_keys(["a", "c", "x", "y"]))
    assert n_inputs_done == 2 and len(done) == 3 and np.all(np.diff(done.astype(np.float64)) > 0)

    class Ref:  # stands in for the ObjectRef the read tasks receive
        def hex(self):
            return "ref-1"

    monkeypatch.setattr("ray.get", lambda ref: done)
    uris = ["a", "x", "c", "y"]
    batch = {"uri": np.array(uris, dtype=object), "image_id": np.array(["1", "2", "3", "4"]), "key": uri_keys(uris)}
    kept = pipeline.drop_done(batch, Ref())
    assert list(kept["uri"]) == ["x", "y"] and list(kept["image_id"]) == ["2", "4"]


@pytest.mark.parametrize("uris", [["s3://b/a.jpg"], [f"zip://images/{i}.jpg::/x.zip" for i in range(1000)]])
def test_uri_keys_are_stable_and_distinct(uris):
    k = uri_keys(uris)
    assert k.dtype == np.uint64 and len(np.unique(k)) == len(uris)
    assert np.array_equal(k, uri_keys(list(uris)))


def test_readers_take_only_the_rows_and_columns_they_need(tmp_path):
    out = str(tmp_path / "o")
    old = _batch(["o1", "o2"])
    del old["node_id"]  # a part written before the provenance columns existed
    write_batch(old, out)
    write_batch(_batch(["n1", "n2", "n3"]), out)
    some = read_results(out, ["uri", "node_id", "thumbnail_jpeg"], uris=["o2", "n3"]).to_pydict()
    assert sorted(some["uri"]) == ["n3", "o2"]
    assert dict(zip(some["uri"], some["node_id"])) == {"n3": "node-a", "o2": None}
    assert read_results(out, ["uri"]).num_rows == 5
    assert read_results(out, ["uri", "thumbnail_jpeg"], uris=[]).num_rows == 0  # nothing flagged: nothing read


def test_counts_are_matched_by_uri_missing_and_stale_named(tmp_path):
    from skinscan.screening.partindex import count_results

    out = str(tmp_path / "o")
    write_batch(_batch(["a", "b", "c"]), out)
    exact = count_results(out, uri_keys(["a", "b", "c"]))
    assert exact["complete"] and exact["missing"] == 0 and exact["stale"] == 0 and exact["inputs"] == 3
    moved = count_results(out, uri_keys(["a", "b", "d", "d"]))  # c renamed to d since; d listed twice
    assert moved["inputs"] == 3 and moved["missing"] == 1 and not moved["complete"]
    assert moved["stale"] == 1 and moved["stale_examples"] == ["c"] and moved["rows"] == 3


def test_a_part_of_an_older_schema_is_read_with_its_new_columns_null(tmp_path):
    """A part written before `metadata_used` (and the provenance columns) existed: resume, counting and the
    report's reads take it, the missing columns as null."""
    import pyarrow.parquet as pq

    from skinscan.screening.partindex import count_results
    from skinscan.screening.writer import prune_stale, to_table

    out = tmp_path / "o"
    write_batch(_batch(["n1", "n2"]), str(out))
    old = to_table(_batch(["o1", "o2", "o3"])).drop_columns(["metadata_used", "node_id"])
    pq.write_table(old, out / "results" / "part-old.parquet")
    t = read_results(str(out), ["uri", "status", "flagged", "metadata_used", "node_id"]).to_pydict()
    assert len(t["uri"]) == 5 and dict(zip(t["uri"], t["metadata_used"]))["o1"] is None
    counts = count_results(str(out), uri_keys(["n1", "n2", "o1", "o2", "o3"]))
    assert counts["complete"] and counts["rows"] == 5
    # a schema v1 part (no `uri_key`) beside v2 parts: its keys come from its URIs, the others' from the column
    pq.write_table(old.drop_columns(["uri_key"]), out / "results" / "part-old.parquet")
    counts = count_results(str(out), uri_keys(["n1", "n2", "o1", "o2", "o3"]))
    assert counts["complete"] and counts["rows"] == 5 and counts["duplicates"] == 0
    t = read_results(str(out), ["uri", "uri_key"]).to_pydict()
    assert [k is None for k in t["uri_key"]].count(True) == 3
    # pruning keys the old part from its URIs too: only the unlisted row goes, named
    pruned = prune_stale(str(out), uri_keys(["n1", "n2", "o1", "o3"]))
    assert (pruned["rows"], pruned["examples"]) == (1, ["o2"])
    assert sorted(read_results(str(out), ["uri"]).column("uri").to_pylist()) == ["n1", "n2", "o1", "o3"]
    kept = read_results(str(out), ["uri", "uri_key"]).to_pydict()  # the rewritten old part now stores its keys
    assert None not in kept["uri_key"] and sorted(kept["uri_key"]) == sorted(uri_keys(kept["uri"]).tolist())


@pytest.mark.parametrize("content", [b"", b"PAR1 torn in the middle"], ids=["empty", "torn"])
def test_an_unreadable_part_is_set_aside_and_its_inputs_count_as_not_written(tmp_path, content, capsys):
    out = tmp_path / "o"
    write_batch(_batch(["a", "b"]), str(out))
    (out / "results" / "part-zero.parquet").write_bytes(content)
    done, n_done, aside = done_keys(str(out), uri_keys(["a", "b", "c"]))
    assert (n_done, aside) == (2, ["part-zero.parquet"])
    assert [p.name for p in (out / "results").iterdir()] != [] and not (out / "results" / "part-zero.parquet").exists()
    kept = list((out / "set_aside").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == content  # moved, not deleted
    assert "set aside unreadable part part-zero.parquet" in capsys.readouterr().err
    assert read_results(str(out), ["uri"]).num_rows == 2  # later readers see only readable parts


def test_a_second_run_into_a_held_local_output_is_refused_and_a_killed_runs_lock_goes_with_it(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    from skinscan.errors import SkinScanError
    from skinscan.screening.lease import LEASE, OutputLease

    out = str(tmp_path / "o")
    with OutputLease(out):
        me = json.loads((tmp_path / "o" / LEASE).read_text())
        with pytest.raises(SkinScanError, match=rf"being written by run {me['run']} \(host .*pid {me['pid']}"):
            OutputLease(out).acquire()
    assert not (tmp_path / "o" / LEASE).exists()  # released
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from skinscan.screening.lease import OutputLease; OutputLease({out!r}).acquire(); "
         "print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(SkinScanError, match=f"pid {holder.pid}"):
        OutputLease(out).acquire()
    holder.send_signal(signal.SIGKILL)  # a SIGKILLed driver: its lock goes with its process
    holder.wait()
    with OutputLease(out):
        pass


def test_an_object_store_lease_expires_renews_and_notices_a_takeover():
    import json
    import time

    import fsspec

    from skinscan.errors import SkinScanError
    from skinscan.screening.lease import LEASE, OutputLease

    out = f"memory://lease-{time.time_ns()}/o"
    fs = fsspec.filesystem("memory")
    path = f"{out.removeprefix('memory://')}/{LEASE}"
    lease = OutputLease(out, renew_s=0.05)
    lease.acquire()
    first = json.loads(fs.cat(path))
    with pytest.raises(SkinScanError, match=f"being written by run {first['run']}"):
        OutputLease(out).acquire()
    time.sleep(0.2)
    assert json.loads(fs.cat(path))["renewed"] > first["renewed"]  # renewed
    fs.pipe(path, json.dumps({**first, "run": "other", "host": "another-host"}).encode())  # taken over
    time.sleep(0.2)
    assert lease.lost and json.loads(fs.cat(path))["run"] == "other"  # noticed, not stolen back
    lease.release()
    assert json.loads(fs.cat(path))["run"] == "other"  # nor deleted
    fs.pipe(path, json.dumps({**first, "host": "another-host", "renewed": time.time() - 120}).encode())
    with OutputLease(out):  # not renewed for 2 minutes: expired
        pass
    assert not fs.exists(path)


def test_screen_into_an_output_another_run_holds_is_refused_before_ray(tmp_path, tiny_bundles, synth_zip):
    from skinscan.config import ScreenConfig
    from skinscan.errors import SkinScanError
    from skinscan.screening.lease import OutputLease
    from skinscan.screening.pipeline import screen

    out = str(tmp_path / "o")
    cfg = ScreenConfig(model=str(tiny_bundles["swin"]), input=str(synth_zip), output=out, progress=False)
    with OutputLease(out), pytest.raises(SkinScanError, match="is being written by run"):
        screen(cfg, ray_address="127.0.0.1:1")  # nobody answers there: refused before any connection
    assert not list_parts(out)


def test_a_local_output_on_a_cluster_of_several_machines_is_refused(monkeypatch):
    import ray

    from skinscan.config import ScreenConfig
    from skinscan.errors import ConfigError
    from skinscan.screening.pipeline import _check_output_reachable

    nodes = [{"Alive": True, "NodeManagerHostname": h} for h in ("head", "gpu-1", "gpu-1")]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    with pytest.raises(ConfigError, match="local path, but the cluster spans 2 machines"):
        _check_output_reachable(ScreenConfig(output="/data/out"))
    _check_output_reachable(ScreenConfig(output="s3://b/out"))
    _check_output_reachable(ScreenConfig(output="/nfs/out", output_shared=True))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeManagerHostname": "h"}] * 3)  # one machine
    _check_output_reachable(ScreenConfig(output="/data/out"))


def test_retry_errors_drops_only_transient_error_rows(tmp_path):
    from skinscan.screening.writer import drop_transient_errors

    out = str(tmp_path / "o")
    batch = _batch(["ok1", "ok2", "read", "torn"])
    batch["status"] = np.array(["ok", "ok", "error", "error"], dtype=object)
    batch["error_type"] = np.array([None, None, "read_error", "truncated"], dtype=object)
    write_batch(batch, out)
    write_batch(_batch(["x1", "x2"]), out)  # a part with no transient error is left alone
    before = set(list_parts(out))
    got = drop_transient_errors(out)
    assert (got["rows"], got["parts"], got["examples"]) == (1, 1, ["read"])
    assert sorted(read_results(out, ["uri"]).column("uri").to_pylist()) == ["ok1", "ok2", "torn", "x1", "x2"]
    assert len(before & set(list_parts(out))) == 1  # only the part that held the row was rewritten
    _, n_done, _ = done_keys(out, uri_keys(["ok1", "ok2", "read", "torn"]))
    assert n_done == 3  # the transient one is to do again; the undecodable one stays an error row


def test_a_readable_part_of_another_schema_is_a_one_line_error_not_set_aside(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skinscan.errors import SkinScanError
    from skinscan.screening.writer import to_table

    out = tmp_path / "o"
    write_batch(_batch(["a", "b"]), str(out))
    t = to_table(_batch(["c", "d"]))
    t = t.set_column(t.schema.get_field_index("confidence"), "confidence", pa.array(["high", "low"]))
    pq.write_table(t, out / "results" / "part-other.parquet")
    assert done_keys(str(out), uri_keys(["a", "c"]))[1] == 2  # resume reads only `uri`: the part counts
    with pytest.raises(SkinScanError, match=r"part-other.parquet: its columns do not fit schema v3"):
        read_results(str(out), ["uri", "confidence"], aside=[])
    assert (out / "results" / "part-other.parquet").exists() and not (out / "set_aside").exists()


def test_a_write_task_on_another_machine_refuses_a_local_output(tmp_path, monkeypatch):
    import socket

    from skinscan.errors import SkinScanError

    out = str(tmp_path / "o")
    write_batch(_batch(["a"]), out, host=socket.gethostname())  # the driver's machine: written
    monkeypatch.setattr(socket, "gethostname", lambda: "autoscaled-gpu-node")
    with pytest.raises(SkinScanError, match="local path of .* but this write task runs on autoscaled-gpu-node"):
        write_batch(_batch(["b"]), out, host="driver-host")
    assert read_results(out, ["uri"]).column("uri").to_pylist() == ["a"]


def test_every_setting_that_changes_a_row_is_in_the_mixed_run_check(tmp_path):
    import json

    from conftest import make_bundle

    from skinscan.config import ScreenConfig, validate
    from skinscan.errors import ConfigError
    from skinscan.models.bundle import ExportRecord, record_export
    from skinscan.screening.output import check_and_record

    bundle = make_bundle(tmp_path / "cls")
    out = tmp_path / "out"

    def cfg(**kw):
        return validate(ScreenConfig, {"model": str(bundle), "input": "x", "output": str(out), **kw})

    check_and_record(cfg(), has_rows=False)
    meta = json.loads((out / "skinscan_output.json").read_text())
    # an output written before these settings were recorded: its maker lacks them and reads as the defaults
    old = {k: v for k, v in meta["makers"][0].items() if k not in ("gpu_decode", "max_pixels", "export_sha256")}
    (out / "skinscan_output.json").write_text(json.dumps({**meta, "makers": [old]}))
    check_and_record(cfg(), has_rows=True)
    for changed, word in [
        ({"gpu_decode": True}, "gpu_decode: False -> True"),
        ({"max_pixels": 1000}, "max_pixels"),
        ({"max_input_bytes": 1000}, "max_input_bytes"),
        ({"precision": "fp16"}, "precision: 'fp32' -> 'fp16'"),
    ]:
        with pytest.raises(ConfigError, match=word):
            check_and_record(cfg(**changed), has_rows=True)
    # the ONNX file exported after the first run: the same maker, now with its sha256, not a second maker
    onnx = tmp_path / "cls" / "model.onnx"
    onnx.write_bytes(b"a")
    record_export(tmp_path / "cls", "onnx", ExportRecord(file="model.onnx", sha256="a" * 64))
    record = check_and_record(cfg(), has_rows=True)
    assert len(record["makers"]) == 1 and record["makers"][0]["export_sha256"] == "a" * 64 and not record["mixed"]
    record_export(tmp_path / "cls", "onnx", ExportRecord(file="model.onnx", sha256="b" * 64))  # exported again
    with pytest.raises(ConfigError, match="export_sha256"):
        check_and_record(cfg(), has_rows=True)


def test_groups_merge_into_the_counts_and_stale_rows_are_named_from_their_group_only(tmp_path, monkeypatch):
    from skinscan.screening import partindex
    from skinscan.screening.writer import drop_transient_errors

    out = str(tmp_path / "out")
    for uris in (["a", "b"], ["c", "d"], ["e", "gone"]):
        write_batch(_batch(uris), out)
    parts = list_parts(out)
    scans = [partindex.scan(out, [p]) for p in parts]  # three groups of one part
    read = []
    real = partindex.read_results
    monkeypatch.setattr(partindex, "read_results", lambda *a, **k: read.append(k.get("parts")) or real(*a, **k))
    counts = partindex.merge_counts(scans, uri_keys(["a", "b", "c", "d", "e"]), out)
    assert counts["rows"] == 6 and counts["ok"] == 3 and counts["errors"] == 3 and counts["flagged"] == 3
    assert counts["stale"] == 1 and counts["stale_examples"] == ["gone"] and counts["missing"] == 0
    assert read == [[p for p in parts if "gone" in str(real(out, ["uri"], parts=[p]).column("uri"))]]
    # a retried rewrite task meets parts its first try already replaced: nothing to do, no error
    assert drop_transient_errors(out, parts=[parts[0] + ".gone"])["rows"] == 0


def test_readers_take_parts_in_groups_of_about_a_row_budget(tmp_path):
    """The report's reads: whole parts, grouped by the rows their footers give, so memory does not grow with the
    output; every row once."""
    from skinscan.screening.writer import read_groups

    out = tmp_path / "o"
    for i, k in enumerate([3, 1, 2, 4, 1]):
        write_batch(_batch([f"p{i}-{j}" for j in range(k)]), str(out))
    tables = list(read_groups(str(out), ["uri"], rows=3))
    sizes = [t.num_rows for t in tables]  # a group closes once it reaches 3 rows: below 3 + the largest part (4)
    assert len(sizes) >= 2 and all(n >= 3 for n in sizes[:-1]) and all(n < 3 + 4 for n in sizes)
    uris = [u for t in tables for u in t.column("uri").to_pylist()]
    assert sorted(uris) == sorted(f"p{i}-{j}" for i, k in enumerate([3, 1, 2, 4, 1]) for j in range(k))


def test_scan_groups_spread_the_parts_over_the_cpus():
    """Scan tasks: as many as the cluster's CPUs (245 parts on 2 CPUs: 2 tasks, not 4; on 64 CPUs: 4 parts each is
    below the floor of 8), within the floor and the cap."""
    from skinscan.screening.partindex import MAX_PARTS_PER_SCAN, groups

    parts = [f"p{i}" for i in range(245)]
    assert [len(g) for g in groups(parts, tasks=2)] == [123, 122]
    assert [len(g) for g in groups(parts[:25], tasks=2)] == [13, 12]
    assert len(groups(parts, tasks=64)) == 31 and {len(g) for g in groups(parts, tasks=64)[:-1]} == {8}
    assert [len(g) for g in groups(parts)] == [64, 64, 64, 53]  # in one process: fixed groups
    big = groups([f"p{i}" for i in range(5000)], tasks=2)
    assert max(len(g) for g in big) == MAX_PARTS_PER_SCAN and sum(len(g) for g in big) == 5000
