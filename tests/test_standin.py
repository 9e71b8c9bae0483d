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
    import numpy as np
    import ray

    from skinscan.bench.scale import manifest
    from skinscan.data.listing import plan_units
    from skinscan.screening.inputs import read_inputs, stream_inputs
    from skinscan.screening.pipeline import build_dataset
    from tests.conftest import make_bundle

    source = str(manifest(tmp_path, 3000))
    ds = stream_inputs(read_inputs(source, 8192, units=plan_units(source)), 250).materialize()
    assert ds.num_blocks() == 12 and ds.count() == 3000
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
    # the pipeline a rerun builds: listing, resume filter and re-blocking are one operator, in the read task
    other = cfg.model_copy(update={"output": str(tmp_path / "other")})
    done = ray.put(np.zeros(0, np.uint64))
    built = build_dataset(other, plan_units(source), done, StandIn()).materialize()
    assert "ReadInputSource->MapBatches(drop_done)->StreamingRepartition" in built.stats()


def test_a_corrupt_part_is_set_aside_its_inputs_screened_again_and_counted(ray_local, tmp_path):
    from skinscan.bench.scale import manifest
    from skinscan.screening.writer import list_parts
    from tests.conftest import make_bundle

    cfg = validate(
        ScreenConfig,
        {
            "model": str(make_bundle(tmp_path / "cls")),
            "input": str(manifest(tmp_path, 2000)),
            "output": str(tmp_path / "out"),
            "progress": False,
            "decode": {"batch_size": 250, "num_cpus": 0.25},
            "classify": {"batch_size": 250, "num_cpus": 0.25},
            "rows_per_part": 500,
        },
    )
    assert screen(cfg, stand_in=StandIn())["complete"]
    torn = sorted(list_parts(cfg.output))[0]
    with open(torn, "r+b") as f:
        f.truncate(100)  # a torn part: its footer is gone
    again = screen(cfg, stand_in=StandIn())
    assert again["rows"] == 2000 and again["complete"] and again["this_run_rows"] >= 1
    assert len(list((tmp_path / "out" / "set_aside").iterdir())) == 1


def test_an_empty_folder_is_one_line_before_ray(tmp_path):
    from skinscan.errors import DataError
    from tests.conftest import make_bundle

    (tmp_path / "empty").mkdir()
    cfg = validate(
        ScreenConfig,
        {"model": str(make_bundle(tmp_path / "cls")), "input": str(tmp_path / "empty"), "output": str(tmp_path / "o")},
    )
    with pytest.raises(DataError, match="no input files"):
        screen(cfg, stand_in=StandIn())
