"""`skinscan train`."""

from __future__ import annotations

import argparse


def cmd_train(a: argparse.Namespace) -> int:
    from skinscan.config import TrainConfig, load_config
    from skinscan.training import run

    cfg = load_config(TrainConfig, a.config, a.set + ([f"resume={a.resume}"] if a.resume else []))
    run(cfg, ray_address=a.address)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from skinscan.cli.common import add_config_args

    p = sub.add_parser("train", help="train a classifier or U-Net segmenter with Ray Train; writes a model bundle")
    add_config_args(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint (same config)")
    p.set_defaults(func=cmd_train)
