"""`skinscan bench scale`: the screening pipeline at millions of inputs on one machine, phase by phase.

The real pipeline runs (listing, resume index, Ray Data, write tasks, counting, pruning, the report) with decode and
classify replaced by stand-ins that sleep instead of reading and computing (`screening.standin`), so 2 cores can
run 1,000,000 inputs and the figures are the cost of SkinScan and Ray themselves. Every phase is a fresh driver
process joining one local Ray cluster; each is timed: wall, the driver's CPU and peak RSS, and the CPU of everything
else on the machine (Ray's workers, raylet, GCS). The screen phase is SIGKILLed once half the inputs are written;
`resume` is the same command again, `resume_noop` once more with nothing left. `count` and `prune` follow the
listing in the same driver, as in a run.

Fleet (`skinscan bench fleet`): the same stand-in on a `ray.cluster_utils.Cluster` whose nodes declare logical GPUs, one
classifier actor per GPU sleeping for an H200's time per batch (conversion/results/gpu_check_h200.json): rows/s
achieved against the ideal (actors x per-actor rate) and the driver's share of one core. Simulated, and named so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}
PHASES = ("list", "screen", "resume", "resume_noop", "count", "prune", "report")
ROWS_PER_PART = 4096
BATCH = 512


def manifest(work: Path, n: int) -> Path:
    """A SkinScan manifest of `n` inputs (the stand-in never reads them, so they need not exist)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / f"manifest_{n}.parquet"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        ids = [f"IMG_{i:08d}" for i in range(n)]
        pq.write_table(pa.table({"image_id": ids, "uri": [f"s3://archive/flat/{i}.jpg" for i in ids]}), path)
    return path


def _config(model: str, source: str, output: str, classify: dict | None = None) -> dict:
    return {
        "model": model,
        "input": source,
        "output": output,
        "explain": "none",
        "thumbnails": "none",
        "progress": False,
        "resume": True,
        "decode": {"batch_size": BATCH, "num_cpus": 0.25},
        "classify": {"batch_size": BATCH, "threads": 1, "num_cpus": 0.25, **(classify or {})},
        "rows_per_part": ROWS_PER_PART,
    }


# ------------------------------------------------------------------ one phase, in a fresh driver process


def _listing(cfg):
    """(ObjectRef of the sorted input keys, how many): what a run lists beside its screening."""
    import ray

    from skinscan.data.listing import plan_units
    from skinscan.screening.pipeline import list_keys

    _, keys, n = list_keys(plan_units(cfg.input, cfg.include_masks), {})
    return keys, ray.get(n)


def _others_cpu(machine0, machine1, own: float) -> float:
    """CPU seconds of every other process on this machine between two `psutil.cpu_times()` (Ray runs its workers
    niced: their time is "nice")."""
    busy = ("user", "nice", "system", "irq", "softirq")
    return max(0.0, sum(getattr(machine1, k, 0.0) - getattr(machine0, k, 0.0) for k in busy) - own)


def phase(name: str, cfg_json: str, stand_in_json: str) -> dict:
    """Run one phase here (a fresh process: its peak RSS is its own) and measure only the phase itself."""
    import psutil

    from skinscan.config import ScreenConfig, validate
    from skinscan.ray_connect import connect
    from skinscan.screening import pipeline
    from skinscan.screening.standin import StandIn

    cfg = validate(ScreenConfig, json.loads(cfg_json))
    stand_in = StandIn(**json.loads(stand_in_json))
    result: dict = {}
    connect(None, 30)  # every phase: joining Ray is outside the measured window (`screen` then finds it joined)
    setup = None
    if name in ("count", "prune"):  # the listing's keys, as a run has them when it counts
        setup = _listing(cfg)[0]
    machine0, me0, t0 = psutil.cpu_times(), time.process_time(), time.time()
    if name == "list":
        result["inputs"] = _listing(cfg)[1]
    elif name in ("screen", "resume", "resume_noop"):
        s = pipeline.screen(cfg, stand_in=stand_in)
        result.update(rows=s["this_run_rows"], complete=s["complete"], total_rows=s["rows"])
    elif name in ("count", "prune"):
        if name == "count":
            out = pipeline.count_in_tasks(cfg.output, setup)
        else:
            out = pipeline._rewrite_in_groups(cfg, pipeline.partindex.prune_task, setup)
        result.update({k: out[k] for k in ("rows", "complete", "duplicates", "missing") if k in out})
    elif name == "report":
        from skinscan.screening.report import write_report

        result["report_bytes"] = Path(write_report(cfg.output)).stat().st_size
    wall, me1, machine1 = time.time() - t0, time.process_time(), psutil.cpu_times()
    return {
        "wall_s": round(wall, 2),
        "driver_cpu_s": round(me1 - me0, 2),
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child reported the harness's own peak
        "driver_rss_mb": _hwm_mb(os.getpid()),
        "workers_cpu_s": round(_others_cpu(machine0, machine1, me1 - me0), 1),
        **result,
    }


# ------------------------------------------------------------------ the harness (the parent process)


def _child(env: dict, *args: str) -> subprocess.Popen:
    """A phase in a fresh process; its output goes to files (a pipe nobody reads while polling would fill and
    block it)."""
    import tempfile

    out = tempfile.NamedTemporaryFile("w+", prefix="bench-scale-", suffix=".out", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "skinscan.bench.scale", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    proc.log = out.name  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen) -> str:
    text = Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]
    Path(proc.log).unlink(missing_ok=True)  # type: ignore[attr-defined]
    return text


def _result(proc: subprocess.Popen, what: str) -> dict:
    proc.wait()
    out = _output(proc)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench scale {what} failed:\n{out[-3000:]}")
    return json.loads(lines[-1])


def _hwm_mb(pid: int) -> int:
    """A live process's peak RSS since it was started or exec'd (the kernel's VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return 0


def _parts(output: str) -> int:
    return len(list((Path(output) / "results").glob("part-*.parquet")))


def _written(output: str) -> int:
    """About the rows written so far: parts x ROWS_PER_PART (a write task's last part may be shorter)."""
    return ROWS_PER_PART * _parts(output)


def _killed_screen(env: dict, args: tuple, output: str, n: int) -> dict:
    """The screen phase, SIGKILLed (driver only: Ray ends its job) once half the inputs are written."""
    import psutil

    machine0, t0 = psutil.cpu_times(), time.time()
    proc = _child(env, *args)
    me = psutil.Process(proc.pid)
    cpu = rss = 0.0
    while proc.poll() is None and _written(output) < n // 2:
        t = me.cpu_times()
        cpu, rss = t.user + t.system, _hwm_mb(proc.pid)
        time.sleep(0.2)
    if proc.poll() is not None:
        raise RuntimeError(f"screen ended before half its inputs were written:\n{_output(proc)[-3000:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _output(proc)
    wall, machine1 = time.time() - t0, psutil.cpu_times()
    seen, since = -1, time.time()  # the killed job's write tasks may still land parts: wait until none has for 3 s
    while time.time() - since < 3:
        now = _parts(output)
        seen, since = now, (since if now == seen else time.time())
        time.sleep(0.2)
    return {
        "wall_s": round(wall, 2),
        "driver_cpu_s": round(cpu, 2),
        "driver_rss_mb": round(rss),
        "workers_cpu_s": round(_others_cpu(machine0, machine1, cpu), 1),
        "killed_at_rows": _written(output),
        "note": "driver process from start to SIGKILL (imports included)",
    }


def run_phases(env: dict, model: str, source: str, output: str, n: int, stand_in: dict) -> dict:
    """Every phase of one size, in order, each in a fresh driver process."""
    import shutil

    shutil.rmtree(output, ignore_errors=True)
    cfg = json.dumps(_config(model, source, output))
    si = json.dumps(stand_in)
    phases = {}
    for name in PHASES:
        args = ("phase", name, cfg, si)
        if name == "screen":
            phases[name] = _killed_screen(env, args, output, n)
        else:
            phases[name] = _result(_child(env, *args), name)
        if name == "resume" and not phases[name]["complete"]:  # every input exactly once after the kill
            raise RuntimeError(f"resume after the kill did not end complete: {phases[name]}")
        print(f"[bench scale] {n:>9,} inputs  {name:<12} {json.dumps(phases[name])}", flush=True)
    return {"inputs": n, "phases": phases}


def _cluster_env(address: str) -> dict:
    env = {**os.environ, "RAY_ADDRESS": address}
    env.pop("RAY_AUTH_MODE", None)
    return env


def s3_prefix(n: int) -> tuple[str, object]:
    """A loopback S3 server (SeaweedFS) holding `n` one-byte objects in one flat prefix; (its URI, the server's
    process). This process's environment points s3:// at it, so the Ray started next reads it too."""
    from skinscan.bench.reads import _seaweed

    data = Path(tempfile.mkdtemp(prefix="bench-scale-s3-"))
    proc, port, fs = _seaweed(data)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
    )
    t0 = time.time()
    for i in range(0, n, 10_000):
        fs.pipe({f"bench/flat/IMG_{k:08d}.jpg": b"x" for k in range(i, min(n, i + 10_000))})
    print(f"[bench scale] {n:,} objects put in {time.time() - t0:.0f} s", flush=True)
    return "s3://bench/flat", (proc, data)


def run(
    workdir: str = "runs/bench",
    out: str | None = None,
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    n: int | None = None,
    s3: bool = False,
    decode_s_per_image: float = 0.0,
    classify_s_per_batch: float = 0.0,
) -> dict:
    """The phases at each size on a local Ray of this machine's cores; the JSON has one entry per size. `s3`: the
    inputs are `n` objects of a flat prefix on a loopback S3 server (default 200,000) instead of a manifest."""
    import shutil

    from ray.cluster_utils import Cluster

    from skinscan.bench.common import swin_t_bundle, write_json

    work = Path(workdir).resolve() / "scale"
    model = str(swin_t_bundle(work / "tiny_swin_64", 64, kwargs=TINY))  # read for its card only
    stand_in = {"decode_s_per_image": decode_s_per_image, "classify_s_per_batch": classify_s_per_batch}
    sizes = (n,) if n else ((200_000,) if s3 else sizes)
    server = None
    if s3:
        source, server = s3_prefix(sizes[0])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count() or 2})
    try:
        env = _cluster_env(cluster.address)
        res = [
            run_phases(env, model, source if s3 else str(manifest(work, k)), str(work / f"out_{k}"), k, stand_in)
            for k in sizes
        ]
    finally:
        cluster.shutdown()
        if server is not None:
            os.killpg(server[0].pid, signal.SIGKILL)
            shutil.rmtree(server[1], ignore_errors=True)
    for r in res:
        r["source"] = "s3 prefix" if s3 else "manifest"
    _growth(res)
    write_json({"runs": res}, out)
    return {"runs": res}


def _growth(res: list[dict]) -> None:
    if len(res) < 2:
        return
    a, b = res[0], res[-1]
    print(f"growth from {a['inputs']:,} to {b['inputs']:,} inputs ({b['inputs'] / a['inputs']:.0f}x the work):")
    for name in PHASES:
        pa_, pb = a["phases"][name], b["phases"][name]
        print(
            f"  {name:<12} wall {pb['wall_s'] / max(1e-3, pa_['wall_s']):5.1f}x   driver CPU "
            f"{pb['driver_cpu_s'] / max(1e-3, pa_['driver_cpu_s']):5.1f}x   driver RSS "
            f"{pb['driver_rss_mb'] / max(1, pa_['driver_rss_mb']):4.2f}x"
        )


# ------------------------------------------------------------------ a simulated GPU fleet

GPU_CHECK = Path(__file__).resolve().parents[2] / "conversion" / "results" / "gpu_check_h200.json"
GPUS_PER_NODE = 16
CPUS_PER_NODE = 8  # logical: each concurrent decode or write task is a real process here, and 2 cores run them all


def h200_batch() -> tuple[int, float]:
    """(batch, seconds per batch) of the fastest Swin-T variant measured on an H200 (model only)."""
    res = json.loads(GPU_CHECK.read_text())["results"]
    best = max(res, key=lambda r: max(r["img_per_s"].values()))
    batch, rate = max(best["img_per_s"].items(), key=lambda kv: kv[1])
    return int(batch), int(batch) / rate


def fleet_run(work: Path, actors: int, n: int, batch: int | None = None) -> dict:
    """One fleet size, in this (fresh) process: a loopback cluster of nodes with GPUS_PER_NODE logical GPUs, one
    stand-in classifier actor per GPU; the driver's CPU and the rows/s it achieved against the ideal."""
    import math
    import shutil

    import ray
    from ray.cluster_utils import Cluster

    from skinscan.bench.common import swin_t_bundle
    from skinscan.config import ScreenConfig, validate
    from skinscan.ray_connect import connect
    from skinscan.screening.pipeline import screen
    from skinscan.screening.standin import StandIn

    measured, s_per_batch = h200_batch()
    batch = batch or measured  # a larger batch at the measured per-image rate (the H200 curve is flat by 256)
    s_per_batch *= batch / measured
    model = str(swin_t_bundle(work / "tiny_swin_64", 64, kwargs=TINY))
    output = work / f"fleet_{actors}"
    shutil.rmtree(output, ignore_errors=True)
    raw = _config(model, str(manifest(work, n)), str(output))
    raw["decode"] = {"batch_size": batch, "num_cpus": 0.25}
    raw["rows_per_part"] = max(ROWS_PER_PART, batch)
    raw["classify"] = {"batch_size": batch, "actors": actors, "num_cpus": 0.25, "num_gpus": 1}
    cfg = validate(ScreenConfig, raw)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(math.ceil(actors / GPUS_PER_NODE)):
        cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE)
    cluster.wait_for_nodes()
    try:
        connect(cluster.address, 30)
        c0, t0 = time.process_time(), time.time()
        s = screen(cfg, stand_in=StandIn(classify_s_per_batch=s_per_batch))
        wall, cpu = time.time() - t0, time.process_time() - c0
    finally:
        ray.shutdown()
        cluster.shutdown()
    ideal = actors * batch / s_per_batch
    steady = s["steady_images_per_s"]  # None where parts came in a burst (too short a run to tell)
    return {
        "actors": actors,
        "batch": batch,
        "inputs": n,
        "ideal_rows_per_s": round(ideal),
        "achieved_rows_per_s": round(steady) if steady else None,
        "achieved_share_of_ideal": round(steady / ideal, 3) if steady else None,
        "wall_s": round(wall, 1),
        "driver_cpu_s": round(cpu, 1),
        "driver_share_of_one_core": round(cpu / max(1e-9, wall), 3),
        # start-up included, so a lower bound on the rows one driver core can schedule per second
        "rows_per_driver_cpu_s": round(s["this_run_rows"] / max(1e-9, cpu)),
    }


def _actor_memory(proc: subprocess.Popen) -> int:
    """While `proc` runs: the largest unique memory (USS, MB) of one stand-in classifier actor, sampled every 2 s
    from this process (sampling in the driver would add to the CPU it measures)."""
    import psutil

    peak = 0
    while proc.poll() is None:
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                if "StandInClassify" in " ".join(p.info["cmdline"] or []) or "StandInClassify" in (
                    p.info["name"] or ""
                ):
                    peak = max(peak, p.memory_full_info().uss)
            except psutil.Error:
                continue
        time.sleep(2)
    return round(peak / 2**20)


def fleet(
    workdir: str = "runs/bench", out: str | None = None, actors=(8, 32, 64), n: int = 200_000, batch: int | None = None
) -> dict:
    """The fleet curve: each size in a fresh process (one process joins one Ray cluster)."""
    from skinscan.bench.common import write_json

    work = Path(workdir).resolve() / "scale"
    rows = []
    for k in actors:
        env = {key: v for key, v in os.environ.items() if key != "RAY_ADDRESS"}
        proc = _child(env, "fleet", str(work), str(k), str(n), str(batch or 0))
        uss = _actor_memory(proc)
        rows.append({**_result(proc, f"fleet {k}"), "actor_uss_mb": uss})
        print(f"[bench scale] fleet {json.dumps(rows[-1])}", flush=True)
    write_json({"fleet": rows, "simulated": True}, out)
    return {"fleet": rows}


if __name__ == "__main__":
    if sys.argv[1] == "phase":
        print(json.dumps(phase(*sys.argv[2:5])))
    elif sys.argv[1] == "fleet":
        print(json.dumps(fleet_run(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) or None)))
