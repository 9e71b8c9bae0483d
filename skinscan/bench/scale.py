"""Where the driver stands in a screening run, and how rows/s change with the number of nodes.

Driver: CPU seconds per 1,000 rows, its share of all CPU used, its peak RSS, for manifests of 20,000 and 200,000
small synthetic JPEGs (members of one zip) screened by a tiny Swin with explain=all: the model is tiny so that the
pipeline's own costs, not the model, dominate; that is where a driver on the row path shows. Each size runs in a
fresh process, so one run's memory does not carry into the next.

Nodes: rows/s on a loopback Ray cluster (`ray.cluster_utils.Cluster`, a head with 0 CPUs) with 1, 2 and 3 worker
nodes of 2 logical CPUs each, and the CPU seconds each node's processes used. On a 2-core machine the nodes share
two cores, so rows/s cannot grow: the figures show the cost of running multi-node, not its speed-up.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

TINY = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}


def small_archive(path: Path, n: int, size: int = 64) -> Path:
    """`n` synthetic lesion JPEGs (16 distinct renders, re-encoded with noise), stored in a zip."""
    from PIL import Image

    from skinscan.data.synth import render

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    base = [render(c, size, np.random.default_rng(i))[0] for i, c in enumerate(["MEL", "NV", "BCC", "BKL"] * 4)]
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            arr = np.clip(base[i % 16].astype(np.int16) + rng.integers(-4, 5, (size, size, 1)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
            zf.writestr(f"images/IMG_{i:07d}.jpg", buf.getvalue())
    tmp.rename(path)
    return path


def manifest(work: Path, n: int) -> Path:
    """A SkinScan manifest (Parquet: image_id, uri) of the `n` members of `scale_{n}.zip`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / f"scale_{n}.parquet"
    if not path.exists():
        archive = small_archive(work / f"scale_{n}.zip", n)
        ids = [f"IMG_{i:07d}" for i in range(n)]
        uris = [f"zip://images/{i}.jpg::{archive}" for i in ids]
        pq.write_table(pa.table({"image_id": ids, "uri": uris}), path)
    return path


def measure(run) -> dict:
    """Run `run()`; return the driver process's CPU seconds, the whole machine's CPU seconds (user + system, all
    cores, niced processes included) and the driver's peak RSS (the kernel's high-water mark for this process: no
    sampling thread whose own CPU would count as the driver's)."""
    import resource

    import psutil

    me = psutil.Process()
    c0, m0, t0 = me.cpu_times(), psutil.cpu_times(), time.time()
    result = run()
    c1, m1 = me.cpu_times(), psutil.cpu_times()
    busy = ("user", "nice", "system", "irq", "softirq")  # Ray runs its workers niced: their time is "nice"
    return {
        "result": result,
        "driver_cpu_s": (c1.user - c0.user) + (c1.system - c0.system),
        "all_cpu_s": sum(getattr(m1, k, 0.0) - getattr(m0, k, 0.0) for k in busy),
        "wall_s": time.time() - t0,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
    }


def _config(work: Path, source: Path, output: Path, classify_actors: int = 1):
    from skinscan.bench.common import swin_t_bundle
    from skinscan.config import ScreenConfig, validate

    tiny = swin_t_bundle(work / "tiny_swin_64", 64, kwargs=TINY)
    return validate(
        ScreenConfig,
        {
            "model": str(tiny),
            "input": str(source),
            "output": str(output),
            "explain": "all",
            "progress": False,
            "decode": {"batch_size": 512, "num_cpus": 0.5},
            "classify": {"batch_size": 512, "threads": 1, "num_cpus": 1, "actors": classify_actors},
            "rows_per_part": 4096,
        },
    )


def driver_run(work: Path, n: int) -> dict:
    """One size, in this (fresh) process: local Ray, the screening job over a manifest of `n` inputs."""
    import shutil

    import ray

    from skinscan.screening.pipeline import screen

    source = manifest(work, n)
    output = work / "out_scale"
    shutil.rmtree(output, ignore_errors=True)
    cfg = _config(work, source, output)
    ray.init(configure_logging=False, log_to_driver=False)
    m = measure(lambda: screen(cfg))
    rows = m["result"]["this_run_rows"]
    return {
        "inputs": n,
        "rows": rows,
        "wall_s": round(m["wall_s"], 1),
        "driver_cpu_s": round(m["driver_cpu_s"], 2),
        "driver_cpu_s_per_1000_rows": round(1000 * m["driver_cpu_s"] / max(1, rows), 4),
        "all_cpu_s": round(m["all_cpu_s"], 1),
        "driver_share_of_all_cpu": round(m["driver_cpu_s"] / max(1e-9, m["all_cpu_s"]), 4),
        "driver_peak_rss_mb": round(m["peak"] / 2**20),
        "images_per_s": m["result"]["images_per_s"],
    }


def _node_cpu(cluster, nodes: list) -> dict[str, float]:
    """CPU seconds used so far by each node's Ray processes (raylet, object store, workers), by node."""
    import psutil
    from ray.util.state import list_workers

    pids: dict[str, set[int]] = {n.node_id: set() for n in nodes}
    for w in list_workers(address=cluster.address, limit=10_000):
        if w.node_id in pids and w.pid:
            pids[w.node_id].add(w.pid)
    for n in nodes:
        for infos in n.all_processes.values():
            pids[n.node_id].update(i.process.pid for i in infos)
    out = {}
    for node_id, ps in pids.items():
        total = 0.0
        for pid in ps:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        out[node_id] = total
    return out


def nodes_run(work: Path, k: int, n: int) -> dict:
    """Rows/s over `n` inputs on a loopback cluster of `k` worker nodes (2 logical CPUs each), and each node's CPU."""
    import shutil

    import ray
    from ray.cluster_utils import Cluster

    from skinscan.screening.pipeline import screen

    source = manifest(work, n)
    output = work / f"out_nodes_{k}"
    shutil.rmtree(output, ignore_errors=True)
    cfg = _config(work, source, output, classify_actors=k)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(k)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    before = _node_cpu(cluster, nodes)
    t0 = time.time()
    s = screen(cfg)
    wall = time.time() - t0
    after = _node_cpu(cluster, nodes)
    ray.shutdown()
    cluster.shutdown()
    return {
        "worker_nodes": k,
        "inputs": n,
        "rows": s["this_run_rows"],
        "wall_s": round(wall, 1),
        "images_per_s": s["images_per_s"],
        "cpu_s_per_node": [round(after[x.node_id] - before.get(x.node_id, 0.0), 1) for x in nodes],
    }


def loopback_env(work: Path) -> dict[str, str]:
    """Environment for a Ray cluster on loopback: every node on 127.0.0.1 (Ray would give each this machine's
    outward IP) and token authentication with a token of its own."""
    import os

    token = work / "loopback_token"
    if not token.exists():
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(os.urandom(32).hex())
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    return {**env, "RAY_AUTH_TOKEN_PATH": str(token)}


def _in_fresh_process(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "skinscan.bench.scale", *args],
        capture_output=True,
        text=True,
        check=False,
        env=loopback_env(Path(args[1])) if args[0] == "nodes" else None,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"bench scale {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def _table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


def run(
    workdir: str = "runs/bench",
    out: str | None = None,
    sizes: tuple[int, ...] = (20_000, 200_000),
    nodes: tuple[int, ...] = (1, 2, 3),
    node_inputs: int = 20_000,
) -> dict:
    from skinscan.bench.common import write_json

    work = Path(workdir).resolve()
    driver = []
    for n in sizes:
        driver.append(_in_fresh_process("driver", str(work), str(n)))
        _table(driver[-1:])
    if len(driver) > 1:
        a, b = driver[0], driver[-1]
        slope = (b["driver_cpu_s"] - a["driver_cpu_s"]) / max(1, b["rows"] - a["rows"]) * 1000
        print(
            f"driver CPU per extra 1,000 rows (between {a['inputs']} and {b['inputs']}): {slope:.4f} s; "
            f"peak RSS {b['driver_peak_rss_mb']} MB vs {a['driver_peak_rss_mb']} MB "
            f"({b['driver_peak_rss_mb'] / max(1, a['driver_peak_rss_mb']):.2f}x)"
        )
    per_node = [_in_fresh_process("nodes", str(work), str(k), str(node_inputs)) for k in nodes]
    if per_node:
        _table(per_node)
    res = {"driver": driver, "nodes": per_node}
    write_json(res, out)
    return res


if __name__ == "__main__":
    what, work = sys.argv[1], Path(sys.argv[2])
    if what == "driver":
        print(json.dumps(driver_run(work, int(sys.argv[3]))))
    else:
        print(json.dumps(nodes_run(work, int(sys.argv[3]), int(sys.argv[4]))))
