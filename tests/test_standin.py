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
