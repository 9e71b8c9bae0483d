"""The prepared GPU device check runs here in its dry mode (CPU, tiny Swin): same code path, same JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_dry_run_writes_its_json(tmp_path):
    out = tmp_path / "device_check.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "conversion/device_check.py"), "--dry", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads(out.read_text())
    variants = {v["variant"]: v for v in info["variants"]}
    assert set(variants) == {"fp32", "bf16"} and info["dry_run"] is True
    assert variants["fp32"]["max_abs_logit_diff"] == 0 and variants["fp32"]["mask_agreement"] == 1.0
    assert variants["bf16"]["top1_agreement"] >= 0.5 and variants["bf16"]["cam_max_abs_diff"] < 0.5
    for v in variants.values():
        assert all(rate > 0 for rate in v["img_per_s_end_to_end"].values())
    assert info["onnxruntime"]["max_abs_logit_diff"] < 1e-4 and info["onnxruntime"]["top1_agreement"] == 1.0
    assert info["decode_img_per_s"] > 0


def test_device_check_without_a_gpu_says_so_in_one_line():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check runs instead of refusing")
    run = subprocess.run([sys.executable, str(ROOT / "conversion/device_check.py")], capture_output=True, text=True)
    assert run.returncode != 0 and "no CUDA device" in run.stderr and "Traceback" not in run.stderr
