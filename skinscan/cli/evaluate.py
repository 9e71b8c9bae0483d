"""`skinscan evaluate`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics (raw + oversampled), ISIC score, leakage guard, plots")
    p.add_argument("--model", required=True, help="classifier bundle")
    p.add_argument("--data", required=True, help="manifest or dataset URI (CSV, folder, archive)")
    p.add_argument("--split", help="evaluate only this split (train/val/test) of the data")
    p.add_argument("-o", "--output", help="output folder (default: <model>/evaluation[-<split>])")
    p.add_argument("--allow-overlap", action="store_true", help="evaluate even if images overlap training data")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from skinscan.config import EvaluateConfig, validate
    from skinscan.evaluation.run import run

    fields = ("model", "data", "split", "output", "allow_overlap", "backend")
    run(validate(EvaluateConfig, {k: getattr(a, k) for k in fields}))
    return 0
