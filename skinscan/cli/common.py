"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse


def print_table(title: str, rows: dict) -> None:
    print(title)
    width = max((len(str(k)) for k in rows), default=4)
    for k, v in rows.items():
        print(f"  {str(k):<{width}}  {v}")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set epochs=3 --set model.img_size=128",
    )
