"""`skinscan submit` and `skinscan jobs list|status|logs|stop`."""

from __future__ import annotations

import argparse

from skinscan.errors import SkinScanError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit train|convert|evaluate|screen to a Ray cluster")
    p.add_argument("job", choices=["train", "convert", "evaluate", "screen"])
    p.add_argument("--address", help="Ray dashboard / job API URL (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--config", help="the job's YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--pip", action="append", help="extra pip requirement for the job's runtime_env")
    p.add_argument("--follow", action="store_true", help="stream logs; exit 0 only if the job SUCCEEDED")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds")
    p.add_argument(
        "--gpus",
        type=float,
        help="run the job's driver on a node with this many GPUs (convert --to tensorrt: the engine is built for "
        "that node's GPU; an autoscaling cluster starts one)",
    )
    p.add_argument(
        "--paths-on-cluster",
        action="store_true",
        help="local paths in the config exist on the cluster's nodes (a shared filesystem): send them as given",
    )
    p.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="list, inspect, read logs of, or stop submitted jobs")
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("job_id", nargs="?")
    j.add_argument("--address")
    j.set_defaults(func=cmd_jobs)


def cmd_submit(a: argparse.Namespace) -> int:
    from skinscan.submission import _client, failure_reason, submit

    job_id, status = submit(
        a.job, a.config, a.set, a.address, a.pip, a.follow, a.timeout, a.paths_on_cluster, gpus=a.gpus
    )
    if not a.follow:
        print(f"follow it: skinscan jobs logs {job_id}   status: skinscan jobs status {job_id}")
        return 0
    if status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return 0
    raise SkinScanError(f"job {job_id} {status}: {failure_reason(_client(a.address), job_id)}")


def cmd_jobs(a: argparse.Namespace) -> int:
    from skinscan.submission import _client

    client = _client(a.address)
    if a.action == "list":
        for info in client.list_jobs():
            print(f"{info.submission_id}  {info.status}  {info.metadata.get('skinscan_job', '-')}  {info.entrypoint}")
        return 0
    if not a.job_id:
        raise SkinScanError(f"jobs {a.action} needs a JOB_ID (see `skinscan jobs list`)")
    try:
        if a.action == "status":
            info = client.get_job_info(a.job_id)
            print(f"{a.job_id}  {info.status}  {info.message or ''}")
        elif a.action == "logs":
            print(client.get_job_logs(a.job_id), end="")
        else:
            print(f"stop requested: {client.stop_job(a.job_id)}")
    except RuntimeError as err:
        raise SkinScanError(str(err).strip().splitlines()[0]) from None
    return 0
