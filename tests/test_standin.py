"""The stand-in stages of `skinscan bench scale`: the real pipeline (listing, resume, writers, counting) with decode
and classify sleeping instead of working, so that capacity figures measure SkinScan and Ray, not a model."""

from __future__ import annotations

import pytest

from skinscan.config import ScreenConfig, validate
from skinscan.screening.pipeline import screen
from skinscan.screening.standin import StandIn
from skinscan.screening.writer import read_results

pytestmark = pytest.mark.slow


def test_stand_in_rows_are_counted_resumed_and_read_like_real_ones(ray_local, tmp_path):
    from skinscan.bench.scale import manifest
    from tests.conftest import make_bundle

    source = manifest(tmp_path, 3000)
    cfg = validate(
        ScreenConfig,
        {
            "model": str(make_bundle(tmp_path / "cls")),  # read for its card only
            "input": str(source),
            "output": str(tmp_path / "out"),
            "progress": False,
            "resume": True,
            "decode": {"batch_size": 250, "num_cpus": 0.25},
            "classify": {"batch_size": 250, "num_cpus": 0.25},
            "rows_per_part": 500,
        },
    )
    first = screen(cfg, stand_in=StandIn(classify_s_per_batch=0.05))
    assert first["this_run_rows"] == first["rows"] == 3000 and first["complete"]
    rows = read_results(cfg.output, ["uri", "status", "backend", "predicted_class", "t_classify_ms"]).to_pandas()
    assert rows["t_classify_ms"].round(3).eq(0.2).all()  # 50 ms slept per batch of 250
    assert rows["uri"].is_unique and len(rows) == 3000
    assert (
        set(rows["status"]) == {"ok"}
        and set(rows["backend"]) == {"stand-in"}
        and set(rows["predicted_class"]) == {"NV"}
    )
    again = screen(cfg, stand_in=StandIn())  # the resume index finds every input written
    assert again["this_run_rows"] == 0 and again["rows"] == 3000 and again["complete"]


def test_the_listing_reaches_decode_in_decode_sized_blocks_without_a_cpu_of_its_own(ray_local, tmp_path):
    """The streamed listing is re-blocked inside the read task (a separate repartition operator asks for a whole
    CPU, which actor pools holding the cluster's CPUs never leave it: a stalled run)."""
    from skinscan.bench.scale import manifest
    from skinscan.data.listing import plan_units
    from skinscan.screening.inputs import read_inputs, stream_inputs
    from tests.conftest import make_bundle

    source = str(manifest(tmp_path, 3000))
    ds = stream_inputs(read_inputs(source, 8192, units=plan_units(source)), 250).materialize()
    assert ds.num_blocks() == 12 and ds.count() == 3000
    assert "ReadInputSource->MapBatches(_keep_all)->StreamingRepartition" in ds.stats()  # one fused operator
    cfg = validate(
        ScreenConfig,
        {
            "model": str(make_bundle(tmp_path / "cls")),
            "input": source,
            "output": str(tmp_path / "out"),
            "progress": False,
            "decode": {"batch_size": 250, "num_cpus": 0.25},
            # the classifier pool holds 1.75 of the session's 2 CPUs: listing, decode and write share the rest
            "classify": {"batch_size": 250, "num_cpus": 0.875, "actors": 2},
            "rows_per_part": 500,
        },
    )
    s = screen(cfg, stand_in=StandIn(classify_s_per_batch=0.01))
    assert s["rows"] == 3000 and s["complete"] and s["listing_s"] is not None
