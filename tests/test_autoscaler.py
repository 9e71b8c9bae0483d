"""The autoscaler starts GPU worker nodes from zero for a GPU-requesting screening job (Ray's fake_multinode
provider: real raylets on this machine that declare fake GPUs; token authentication on, loopback only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # what RAY_FAKE_CLUSTER gives the head (ray.scripts)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_gpu_cluster(tmp_path_factory):
    import signal
    import time

    from conftest import free_port_base, local_cluster_pids

    tmp = tmp_path_factory.mktemp("fake")
    port = free_port_base((0, 1000), 30000, 39000)
    temp_dir = f"/tmp/skf-{port}"
    config = {
        "cluster_name": "skinscan-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",  # new nodes join over loopback
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0, "node_config": {}},
            "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "min_workers": 0, "max_workers": 2, "node_config": {}},
        },
        "head_node_type": "head",
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }
    (tmp / "fake.yaml").write_text(yaml.safe_dump(config))
    token = tmp / "token"
    token.write_text(os.urandom(32).hex())
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "SKINSCAN_LOCAL_CLUSTER": temp_dir,  # every process of this cluster inherits it: teardown finds them all
    }
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = [
        ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0",
        f"--autoscaling-config={tmp / 'fake.yaml'}", f"--temp-dir={temp_dir}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={port + 1000}", "--disable-usage-stats",
    ]  # fmt: skip
    up = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:  # by the mark, not the command line: the dashboard and runtime-env agents are renamed processes
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in local_cluster_pids(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 3  # as `cluster/local.sh stop`: Ray's core services wait ~10 s on SIGTERM
            while local_cluster_pids(temp_dir) and time.time() < deadline:
                time.sleep(0.2)


def test_gpu_screen_job_makes_the_autoscaler_start_gpu_nodes(fake_gpu_cluster, tiny_bundles, synth_zip, tmp_path):
    env = fake_gpu_cluster
    nodes = (
        "import json, ray; ray.init(log_to_driver=False); "
        "print('GPUS', json.dumps(sorted(n['Resources'].get('GPU', 0) for n in ray.nodes() if n['Alive'])))"
    )

    def gpus(out: str) -> list[float]:
        return json.loads(next(line for line in out.splitlines() if line.startswith("GPUS "))[5:])

    before = subprocess.run([sys.executable, "-c", nodes], env=env, capture_output=True, text=True, timeout=120)
    assert gpus(before.stdout) == [0], before.stderr[-1500:]  # the head alone: no GPU node yet
    cfg = tmp_path / "screen.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_bundles["swin"]),
                "input": f"zip://images::{synth_zip}",
                "output": str(tmp_path / "out"),
                "device": "cpu",  # the GPUs are fake: the actors ask for one and compute on the CPU
                "progress": False,
                "decode": {"batch_size": 16, "num_cpus": 0.5},
                "classify": {"actors": 1, "batch_size": 16, "num_cpus": 1, "num_gpus": 1, "threads": 1},
            }
        )
    )
    job = subprocess.run(
        [sys.executable, "-m", "jobs.screen", "--config", str(cfg)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
    rows = pd.read_parquet(tmp_path / "out" / "results", columns=["uri", "node_id"])
    assert len(rows) == 120 and rows["uri"].is_unique
    assert rows["node_id"].notna().all() and FAKE_HEAD_NODE_ID not in set(rows["node_id"])  # on started nodes
    after = subprocess.run([sys.executable, "-c", nodes], env=env, capture_output=True, text=True, timeout=120)
    assert sum(gpus(after.stdout)) >= 1, f"no GPU worker node was started: {after.stdout[-500:]}"
