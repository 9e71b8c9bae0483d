"""`skinscan screen` and `skinscan report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from skinscan.cli.common import add_config_args

    p = sub.add_parser("screen", help="stream an archive through segmentation, classification, explanation")
    add_config_args(p)
    p.add_argument("--model", help="classifier bundle")
    p.add_argument("--input", help="folder, zip, tar(.gz), s3://..., or a manifest CSV/Parquet")
    p.add_argument("--output", help="results folder (Parquet parts)")
    p.add_argument("--segmenter", help="U-Net bundle")
    p.add_argument("--explain", choices=["all", "flagged", "none"])
    p.add_argument("--backend", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--connect-timeout", type=float, help="seconds to reach the cluster before giving up (30)")
    p.add_argument(
        "--force-mixed", action="store_true", help="add rows to an output made with another model or configuration"
    )
    p.add_argument("--prune-stale", action="store_true", help="remove rows whose input is no longer listed")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="screen again the rows whose error was transient (a read that failed or timed out), not undecodable ones",
    )
    p.set_defaults(func=cmd_screen)

    r = sub.add_parser("report", help="one self-contained HTML page from a screening output folder")
    r.add_argument("output", help="the screening output folder")
    r.add_argument("--max-flagged", type=int, default=60, help="flagged lesions shown in the gallery")
    r.add_argument("-o", "--html", help="report path (default: OUTPUT/report.html)")
    r.set_defaults(func=cmd_report)


def cmd_screen(a: argparse.Namespace) -> int:
    from skinscan.config import ScreenConfig, load_config
    from skinscan.screening.pipeline import run

    over = list(a.set)
    for key in ("model", "input", "output", "segmenter", "explain", "backend"):
        if getattr(a, key):
            over.append(f"{key}={getattr(a, key)}")
    over += [f"{k}=true" for k in ("force_mixed", "prune_stale", "retry_errors") if getattr(a, k)]
    if a.connect_timeout:
        over.append(f"connect_timeout_s={a.connect_timeout}")
    cfg = load_config(ScreenConfig, a.config, over)
    try:
        summary = run(cfg, ray_address=a.address)
    except KeyboardInterrupt as err:
        print(f"skinscan: interrupted: {err}", file=sys.stderr)
        return 130
    return 0 if summary["complete"] else 1


def cmd_report(a: argparse.Namespace) -> int:
    from skinscan.screening.report import write_report

    path = write_report(a.output, a.html, a.max_flagged)
    where = f"file://{path.resolve()}" if isinstance(path, Path) else "download it first"
    print(f"report -> {path}  (open it in a browser: {where})")
    return 0
