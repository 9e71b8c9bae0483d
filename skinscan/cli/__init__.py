"""The `skinscan` command line: one module per command, each a thin layer over the library's functions."""

from __future__ import annotations

import argparse
import sys

from skinscan import __version__
from skinscan.cli import bench, convert, data, demo, evaluate, explain, screen, submit, train
from skinscan.errors import SkinScanError

COMMANDS = [data, train, convert, explain, evaluate, screen, demo, submit, bench]
"""Each module's `add_parser(subparsers)` adds its command(s), in `skinscan --help` order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinscan", description="Screen dermoscopy images at scale on Ray.")
    parser.add_argument("--version", action="version", version=f"skinscan {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SkinScanError as err:
        print(f"skinscan: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skinscan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
