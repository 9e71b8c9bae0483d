"""The prepared GPU device check runs here in its dry mode (CPU, tiny Swin): same code path, same JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_dry_run_writes_its_json(tmp_path, record_property):
    """`bash conversion/device_check.sh --dry` as CI runs it, with Ray unimportable as on the GPU machine (pydantic
    and pytorch-grad-cam travel there as wheels, `device_wheels.sh`): the shipped stages run, each named as it runs,
    and the JSON holds every step (its lines are printed at the end of the test run)."""
    import os

    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # `python3` is this environment's
        "PYTHONPATH": str(tmp_path / "block"),
        "OUT": str(tmp_path),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "conversion/device_check.sh"), "--dry"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    steps = [ln for ln in run.stdout.splitlines() if ln.startswith("[device check]")]
    for line in steps:
        record_property("device_check", line)
    assert len(steps) == 7 and all("JSON written" in ln for ln in steps), run.stdout[-2000:]
    assert "SegmentStage -> ClassifyStage" in steps[1] and "ExplainStage" in steps[3]
    assert not info_failed(tmp_path), run.stdout[-2000:]
    info = json.loads((tmp_path / "device_check.json").read_text())
    assert info["steps_done"] == ["decode", "fp32", "bf16", "gradcam", "onnxruntime", "tensorrt", "training"]
    assert info["dry_run"] and info["tensorrt"]["skipped"] and info["decode"]["refused_by_gpu_path"] == 0
    assert info["decode"]["vs_cpu_path_mean_abs"] < 0.5 and all(
        r > 0 for r in info["decode"]["stage_img_per_s"].values()
    )
    variants = {v["variant"]: v for v in info["variants"]}
    assert variants["fp32"]["max_abs_prob_diff"] < 1e-5 and variants["fp32"]["mask_agreement"] == 1.0
    assert variants["bf16"]["top1_agreement"] >= 0.5 and variants["bf16"]["cam_max_abs_diff"] < 0.5
    for v in variants.values():
        assert all(rate > 0 for rate in v["img_per_s_end_to_end"].values()) and v["ms_per_image"]["classify"] > 0
    assert info["gradcam"]["cam_max_abs_diff"] < 1e-3 and info["gradcam"]["img_per_s"] > 0
    assert info["onnxruntime"]["max_abs_prob_diff"] < 1e-4 and info["onnxruntime"]["top1_agreement"] == 1.0
    assert info["training"]["images"] == info["training"]["classes_drawn"] > 0
    assert info["training"]["mean_loss"] > 0


def info_failed(tmp_path) -> dict:
    return json.loads((tmp_path / "device_check.json").read_text())["steps_failed"]


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    """A step that raises (here: training) is recorded with its first line; the JSON still holds the others."""
    from skinscan.bench import device_check

    def broken(*_a, **_k):
        raise RuntimeError("CUDA error: out of memory\nmore")

    monkeypatch.setattr(device_check, "train_check", broken)
    out = tmp_path / "d.json"
    info = device_check.main(["--dry", "--out", str(out)])
    assert info["steps_failed"] == {"training": "RuntimeError: CUDA error: out of memory"}
    assert "gradcam" in info["steps_done"] and json.loads(out.read_text())["steps_failed"] == info["steps_failed"]
    skipped = device_check.main(["--dry", "--budget-s", "0"])
    assert skipped["steps_done"] == [] and set(skipped["steps_skipped"]) >= {"decode", "training"}


def test_the_wheels_the_device_check_carries_are_pinned_in_the_lock():
    """`device_wheels.sh` fetches what the GPU machine lacks at constraints.txt's versions: every name it pins is
    in the lock, and every package the stages import beyond the machine's image is among them."""
    import re

    script = (ROOT / "conversion/device_wheels.sh").read_text()
    names = set(re.findall(r"for name in ([^;]+);", script)[0].split()) | set(re.findall(r"\$\(pin ([\w-]+)\)", script))
    lock = {ln.split("==")[0] for ln in (ROOT / "constraints.txt").read_text().splitlines() if "==" in ln}
    assert names <= lock and {"pydantic", "pydantic-core", "grad-cam", "ttach"} <= names


def test_device_check_without_a_gpu_says_so_in_one_line():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check runs instead of refusing")
    run = subprocess.run(
        [sys.executable, "-m", "skinscan.bench.device_check"], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode != 0 and "no CUDA device" in run.stderr and "Traceback" not in run.stderr
