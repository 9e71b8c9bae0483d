"""The README's command blocks, run as written, in order, where a user runs them (after command 1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(heading: str) -> str:
    """The first ```bash block after `heading`."""
    start = README.index(heading)
    return re.search(r"```bash\n(.*?)```", README[start:], flags=re.S).group(1)


def test_setup_commands_are_the_ones_ci_runs():
    commands = re.findall(r"^python3 -m venv .*$", _block_after("## Set up and run"), flags=re.M)
    assert len(commands) == 2 and commands[0].endswith("skinscan demo") and commands[1].endswith("pytest")
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_cluster_walkthrough_as_written(demo_checkout, tmp_path):
    """cluster/local.sh start, submit the shipped CPU screening config with its relative paths, list the jobs,
    stop: the demo's images are screened once each (masks left out), and no process of the cluster is left."""
    from conftest import free_port_base, local_cluster_pids

    repo, _ = demo_checkout
    base = free_port_base((*range(10), 1000), 30000, 39000)
    block = _block_after("**Submit to a cluster.**").replace("8275", str(base + 1000))
    venv_bin = repo / ".venv" / "bin"  # the checkout's venv is this test run's
    venv_bin.mkdir(parents=True, exist_ok=True)
    (venv_bin / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    temp = f"/tmp/skw-{base}"
    env = {
        **os.environ,
        "RAY_PORT": str(base),
        "RAY_DASHBOARD_PORT": str(base + 1000),
        "SKINSCAN_RAY_TEMP": temp,
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token"),
    }
    env.pop("RAY_ADDRESS", None)
    try:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=repo, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=repo, env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "SUCCEEDED" in run.stdout and "Ray cluster on port" in run.stdout
    listed = [line for line in run.stdout.splitlines() if " screen " in f" {line} " and "python -m jobs.screen" in line]
    assert listed and "SUCCEEDED" in listed[-1], run.stdout[-2000:]  # `skinscan jobs list`
    rows = pd.read_parquet(repo / "runs" / "demo" / "screen-cluster" / "results")
    from skinscan.data.storage import is_mask, split_chained

    members = [split_chained(u)[1] for u in rows["uri"]]
    assert len(rows) == 120 and rows["uri"].is_unique and not any(is_mask(m) for m in members)
    assert not local_cluster_pids(temp), "processes of the cluster outlived cluster/local.sh stop"
