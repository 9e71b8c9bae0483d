"""`skinscan bench train|runtimes|explain|screen|scale|fleet|stages` (benchmarks, not tests)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: training, runtimes, explanations, screening, phases at scale, a simulated GPU fleet",
    )
    p.add_argument("what", choices=["train", "runtimes", "explain", "screen", "scale", "fleet", "reads", "stages"])
    p.add_argument("--workdir", default="runs/bench")
    p.add_argument("-o", "--out", help="write the figures as JSON here")
    p.add_argument("--images", help="screen, stages: a folder of real JPEGs to use (repeated to --n for screen)")
    p.add_argument(
        "--n", type=int, help="screen, scale, fleet: number of inputs (scale: one size instead of 100k and 1M)"
    )
    p.add_argument(
        "--s3", action="store_true", help="scale: a flat prefix of --n objects (200,000) on a loopback S3 server"
    )
    p.add_argument("--batch", type=int, help="fleet: decode and classify batch (default: the H200's measured 256)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a: argparse.Namespace) -> int:
    import importlib
    import inspect

    module, name = ("scale", "fleet") if a.what == "fleet" else (a.what, "run")  # the fleet is scale's simulation
    run = getattr(importlib.import_module(f"skinscan.bench.{module}"), name)
    given = {"images": a.images, "n": a.n, "batch": a.batch, "s3": a.s3 or None}
    extra = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(extra) - set(inspect.signature(run).parameters))
    if unknown:
        raise SystemExit(f"skinscan: error: bench {a.what} takes no --{unknown[0]}")
    run(workdir=a.workdir, out=a.out, **extra)
    return 0
