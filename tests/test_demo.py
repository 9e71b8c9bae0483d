"""The README's main command at its smallest size: every artefact exists and is valid."""

import json
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_demo_end_to_end(demo_checkout):
    from skinscan.models.bundle import load_bundle

    _, result = demo_checkout
    art = {k: Path(v) for k, v in result["artefacts"].items()}
    model, card = load_bundle(art["classifier bundle"])
    assert card.task == "classify" and card.exports["onnx"].sha256
    assert card.parity["onnxruntime"]["passed"]
    seg, seg_card = load_bundle(art["segmenter bundle"])
    assert seg_card.task == "segment"
    rows = pd.read_parquet(art["screening results (Parquet)"])
    assert len(rows) == 120 and rows["uri"].is_unique and (rows["status"] == "ok").all()
    assert rows["mask_png"].notna().all()
    import pyarrow.parquet as pq  # the shift verdict, in the Parquet dataset's own metadata (read_parquet skips it)

    meta = pq.read_schema(art["screening results (Parquet)"] / "_common_metadata").metadata
    summary = json.loads((art["screening results (Parquet)"].parent / "summary.json").read_text())
    assert json.loads(meta[b"skinscan.shift"]) == summary["shift"] and summary["shift"]  # a verdict or its reason
    assert json.loads(meta[b"skinscan.flag_rule"]) == summary["flag"]["rule"]
    ev = json.loads((art["evaluation"].parent / "evaluation.json").read_text())
    assert ev["split"] == "test" and ev["leakage"]["overlapping"] == 0 and ev["raw"]["n"] > 0
    report = art["report"]
    assert "id=n-rows>120<" in report.read_text()
    from skinscan.errors import MissingDependency
    from skinscan.screening.browser import find_chromium, render

    try:
        find_chromium()
    except MissingDependency as err:
        pytest.skip(f"report not checked in a browser: {err}")
    dom = render(report)
    assert 'id="n-rows">120<' in dom
