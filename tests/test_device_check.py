"""The prepared GPU device check runs here in its dry mode (CPU, tiny Swin): same code path, same JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_dry_run_writes_its_json(tmp_path, record_property):
    """`bash conversion/device_check.sh --dry` as CI runs it, with Ray and pydantic unimportable as on the GPU
    machine: the shipped decode path, staging and training step run, each named as it runs, and the JSON holds
    every step (its lines are printed at the end of the test run)."""
    import os

    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(
        "import sys\nsys.modules['ray'] = sys.modules['pydantic'] = None\n"
    )
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
    assert len(steps) == 5 and all("JSON written" in ln for ln in steps), run.stdout[-2000:]
    info = json.loads((tmp_path / "device_check.json").read_text())
    assert info["steps_done"] == ["decode", "fp32", "bf16", "onnxruntime", "training"] and info["dry_run"] is True
    assert info["decode"]["vs_cpu_path_mean_abs"] < 0.5 and info["decode"]["img_per_s"] > 0  # the CPU path's pixels
    variants = {v["variant"]: v for v in info["variants"]}
    assert variants["fp32"]["max_abs_logit_diff"] < 1e-4 and variants["fp32"]["mask_agreement"] == 1.0
    assert variants["bf16"]["top1_agreement"] >= 0.5 and variants["bf16"]["cam_max_abs_diff"] < 0.5
    for v in variants.values():
        assert all(rate > 0 for rate in v["img_per_s_end_to_end"].values())
    assert info["onnxruntime"]["max_abs_logit_diff"] < 1e-4 and info["onnxruntime"]["top1_agreement"] == 1.0
    assert info["training"]["images"] == info["training"]["classes_drawn"] > 0
    assert info["training"]["mean_loss"] > 0


def test_device_check_without_a_gpu_says_so_in_one_line():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check runs instead of refusing")
    run = subprocess.run([sys.executable, "-m", "conversion.device_check"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and "no CUDA device" in run.stderr and "Traceback" not in run.stderr
