"""Ray jobs: submitting them to a cluster (Ray's JobSubmissionClient) and the entry every `jobs/*.py` runs.

The job's config is validated here first (a bad value fails before anything is sent), then travels with the
job as JSON in the `SKINSCAN_CONFIG_JSON` environment variable; the project directory is the working_dir and
the entrypoint is `python -m jobs.<name> --from-env`.
Object-store credentials never travel with a job: the cluster's nodes read object stores with their own identity;
only the allow-listed settings of `skinscan.data.storage.STORAGE_SETTINGS` (endpoint, region) go with it.
With token authentication (RAY_AUTH_MODE=token) Ray's client sends the
token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from skinscan.config import JOB_CONFIGS, load_config, validate
from skinscan.data.storage import storage_env
from skinscan.errors import SkinScanError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ENV = "SKINSCAN_CONFIG_JSON"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXCLUDES = [".venv", "runs", "**/__pycache__", "*.onnx", "*.engine", ".pytest_cache", ".ruff_cache"]


def config_from_env(model: type[BaseModel]):
    """Inside a submitted job: the validated config that `submit` sent, or None."""
    raw = os.environ.get(CONFIG_ENV)
    return validate(model, json.loads(raw)) if raw else None


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001 - connection and auth failures are user-facing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SkinScanError(f"cannot reach the Ray job API at {address}: {first}") from None


def _is_loopback(address: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _excluded(rel: Path) -> bool:
    """Whether a path inside the project stays behind when the project travels as the job's working_dir."""
    import fnmatch

    return any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in EXCLUDES if "/" not in pat) or any(
        fnmatch.fnmatch(rel.name, pat) for pat in EXCLUDES
    )


def reachable_locations(cfg: BaseModel, address: str, paths_on_cluster: bool = False) -> BaseModel:
    """`cfg` with every local path a job reads or writes made reachable from the job, or a one-line error naming
    the one that is not. A job runs in a copy of the project (its working_dir, `runs/` excluded), so a relative path
    means something else there. On a cluster on this machine (a loopback address) paths become absolute. On another
    machine only object-store URIs reach the job, and project files that travel with it (a config under configs/);
    `paths_on_cluster` says the paths exist there (a shared filesystem) and sends them as given."""
    from skinscan.config import OUTPUT_KEYS, locations
    from skinscan.data.storage import scheme, split_chained

    cfg = cfg.model_copy(deep=True)
    local_cluster = _is_loopback(address)
    for key, owner, field in locations(cfg):
        value = owner[field] if isinstance(owner, dict) else getattr(owner, field)
        if not isinstance(value, str):
            continue  # `pretrained: true` (timm's hub) is no path
        chained = split_chained(value)
        path = chained[2] if chained else value
        if scheme(path) != "file" or paths_on_cluster:
            continue
        local = Path(path.removeprefix("file://")).expanduser()
        local = local if local.is_absolute() else Path.cwd() / local
        local = Path(os.path.normpath(local))
        if local_cluster:
            new = str(local)
        else:
            try:
                rel = local.relative_to(ROOT)
            except ValueError:
                rel = None
            travels = rel is not None and local.is_file() and not _excluded(rel)
            if not travels or key.rsplit(".", 1)[-1] in OUTPUT_KEYS:
                raise SkinScanError(
                    f"config key {key}: {value} is a path on this machine, which the cluster at {address} cannot "
                    "see; use an object-store URI (s3://, gs://), or --paths-on-cluster if it is on a filesystem "
                    "the cluster shares"
                )
            new = rel.as_posix()
        new = f"{chained[0]}://{chained[1]}::{new}" if chained else new
        if isinstance(owner, dict):
            owner[field] = new
        else:
            setattr(owner, field, new)
    return cfg


def submit(
    job: str,
    config: str | None,
    overrides: list[str],
    address: str | None = None,
    pip: list[str] | None = None,
    follow: bool = False,
    timeout_s: float | None = None,
    paths_on_cluster: bool = False,
    gpus: float | None = None,
) -> tuple[str, str]:
    """Submit; returns (job_id, final status or 'SUBMITTED'). `gpus`: the driver's GPUs (Ray then runs it on a GPU
    node; `convert --to tensorrt` builds the engine for that node's GPU)."""
    if job not in JOB_CONFIGS:
        raise SkinScanError(f"unknown job {job!r}; choose from {sorted(JOB_CONFIGS)}")
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    cfg = reachable_locations(load_config(JOB_CONFIGS[job], config, overrides), address, paths_on_cluster)
    client = _client(address)
    runtime_env = {
        "working_dir": str(ROOT),
        "excludes": EXCLUDES,
        "env_vars": {CONFIG_ENV: cfg.model_dump_json(), **storage_env()},
    }
    if pip:
        runtime_env["pip"] = pip
    try:
        job_id = client.submit_job(
            entrypoint=f"python -m jobs.{job} --from-env",
            runtime_env=runtime_env,
            metadata={"skinscan_job": job},
            **({"entrypoint_num_gpus": gpus} if gpus else {}),
        )
    except (RuntimeError, ConnectionError) as err:
        raise SkinScanError(f"submission refused: {str(err).strip().splitlines()[0]}") from None
    print(f"submitted {job} as {job_id}")
    if not follow:
        return job_id, "SUBMITTED"
    return job_id, wait(client, job_id, stream=True, timeout_s=timeout_s)


def wait(client, job_id: str, stream: bool = True, timeout_s: float | None = None) -> str:
    from ray.job_submission import JobStatus

    start, seen = time.time(), 0
    while True:
        status = client.get_job_status(job_id)
        if stream:
            logs = client.get_job_logs(job_id)
            if len(logs) > seen:
                print(logs[seen:], end="", flush=True)
                seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value if hasattr(status, "value") else status)
        if timeout_s and time.time() - start > timeout_s:
            raise SkinScanError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(1.0)


def failure_reason(client, job_id: str) -> str:
    """One line: the last error line of the job's logs, else Ray's message."""
    info = client.get_job_info(job_id)
    logs = client.get_job_logs(job_id).strip().splitlines()
    for line in reversed(logs):
        if "error" in line.lower():
            return line.strip()
    return (info.message or "no reason given").strip().splitlines()[-1]


def job_main(job: str, run: Callable[[BaseModel], object], argv: list[str] | None = None) -> int:
    """The whole of a `jobs/<job>.py`: read the config (`--config FILE --set KEY=VALUE ...`, or `--from-env` as
    `skinscan submit` sends it), validate it, call the library's `run(cfg)`; user errors are one line, exit 2."""
    import argparse
    import sys

    model = JOB_CONFIGS[job]
    p = argparse.ArgumentParser(
        prog=f"python -m jobs.{job}", description=f"SkinScan Ray job: {job} ({model.__name__})."
    )
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--from-env", action="store_true", help=f"read the validated config from ${CONFIG_ENV}")
    a = p.parse_args(argv)
    try:
        if a.from_env:
            cfg = config_from_env(model)
            if cfg is None:
                raise SkinScanError(f"--from-env given but {CONFIG_ENV} is not set")
        else:
            cfg = load_config(model, a.config, a.set)
        run(cfg)
        return 0
    except SkinScanError as err:
        print(f"skinscan: error: {err}", file=sys.stderr)
        return 2
