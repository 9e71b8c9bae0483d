"""`skinscan bench train|runtimes|explain|screen` (benchmarks, not tests)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks: training, runtimes, explanations, screening, driver load at scale (prints tables)"
    )
    p.add_argument("what", choices=["train", "runtimes", "explain", "screen", "scale"])
    p.add_argument("--workdir", default="runs/bench")
    p.add_argument("-o", "--out", help="write the figures as JSON here")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a: argparse.Namespace) -> int:
    import importlib

    importlib.import_module(f"skinscan.bench.{a.what}").run(workdir=a.workdir, out=a.out)
    return 0
