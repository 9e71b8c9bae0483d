"""Result parts written by workers: one atomic part per batch, named after its inputs (a retried task rewrites the
same file), the resume index built from the `uri` column only, and the read-task filter that uses it."""

from __future__ import annotations

import numpy as np
import pytest

from skinscan.screening.writer import done_keys, list_parts, read_results, uri_keys, write_batch


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
    done, n_inputs_done = done_keys(out, uri_keys(["a", "c", "x", "y"]))
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
    some = read_results(out, ["uri", "node_id", "thumbnail_jpeg"], uris=["o2", "n3"]).to_pandas()
    assert sorted(some["uri"]) == ["n3", "o2"]
    assert some.set_index("uri")["node_id"].to_dict() == {"n3": "node-a", "o2": None}
    assert read_results(out, ["uri"]).num_rows == 5
    assert read_results(out, ["uri", "thumbnail_jpeg"], uris=[]).num_rows == 0  # nothing flagged: nothing read


def test_counts_are_matched_by_uri_missing_and_stale_named(tmp_path):
    from skinscan.screening.pipeline import count_results

    out = str(tmp_path / "o")
    write_batch(_batch(["a", "b", "c"]), out)
    exact = count_results(out, uri_keys(["a", "b", "c"]))
    assert exact["complete"] and exact["missing"] == 0 and exact["stale"] == 0 and exact["inputs"] == 3
    moved = count_results(out, uri_keys(["a", "b", "d", "d"]))  # c renamed to d since; d listed twice
    assert moved["inputs"] == 3 and moved["missing"] == 1 and not moved["complete"]
    assert moved["stale"] == 1 and moved["stale_examples"] == ["c"] and moved["rows"] == 3
