"""Screening on a real multi-node Ray cluster (Ray's own loopback harness), S3 in and out, a worker node removed
mid-run: every input ends up with exactly one row, from at least two nodes, identical to an uninterrupted run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinscan.data.synth import render
from skinscan.screening.writer import read_results
from tests.conftest import make_bundle, s3_node_environment, uninterrupted_probs, use_s3

pytestmark = pytest.mark.slow
N = 96  # inputs: 24 parts of 4 rows, so the node goes while most are still to come
ROOT = Path(__file__).resolve().parents[1]


def test_node_removed_mid_run_every_input_exactly_once(s3_server, tmp_path, monkeypatch):
    from conversion.onnx_export import ensure_onnx
    from skinscan.models.bundle import publish_bundle

    endpoint, fs = s3_server
    use_s3(monkeypatch, endpoint)
    model = make_bundle(tmp_path / "cls")
    ensure_onnx(str(model))
    publish_bundle(model, "s3://skinscan-test/multinode/model")
    for i in range(N):  # two prefixes: two listing tasks
        buf = io.BytesIO()
        Image.fromarray(render(["MEL", "NV", "BCC", "BKL"][i % 4], 64, np.random.default_rng(i))[0]).save(buf, "JPEG")
        fs.pipe(f"skinscan-test/multinode/in/{'ab'[i % 2]}/img_{i:03d}.jpg", buf.getvalue())
    cfg = {
        "model": "s3://skinscan-test/multinode/model",
        "input": "s3://skinscan-test/multinode/in",
        "output": "s3://skinscan-test/multinode/out",
        "explain": "none",
        "thumbnails": "none",
        "progress": False,
        "decode": {"batch_size": 4, "num_cpus": 0.25},
        "classify": {"batch_size": 4, "threads": 1, "num_cpus": 1.5, "actors": 2, "max_actors": 2},
        "rows_per_part": 4,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, **s3_node_environment(endpoint)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "multinode_screen.py"), str(tmp_path / "cfg.json"), str(tmp_path / "r")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r").read_text())
    assert result["removed"] and result["removed"][0].get("parts_before", N) < N // 4, f"not removed mid-run: {result}"
    assert result["runs"][-1].get("complete"), result
    rows = read_results(cfg["output"], ["uri", "node_id", *(f"prob_{c}" for c in ("MEL", "NV", "BCC", "BKL"))])
    t = rows.to_pandas()
    listed = sorted(f"s3://{p}" for p in fs.find("skinscan-test/multinode/in"))
    assert sorted(t["uri"]) == listed  # every input exactly once: none missing, none twice
    assert t["node_id"].nunique() >= 2, f"rows came from {t['node_id'].nunique()} node(s)"
    expected = uninterrupted_probs(model, listed)
    got = {r.uri: np.array([r.prob_MEL, r.prob_NV, r.prob_BCC, r.prob_BKL]) for r in t.itertuples()}
    assert all(np.allclose(got[u], expected[u], atol=1e-5) for u in listed)
