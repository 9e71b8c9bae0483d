"""`skinscan convert`."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="export a model bundle to ONNX or a TensorRT engine, with a parity check")
    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--to", choices=["onnx", "tensorrt"], default="onnx")
    p.add_argument("--fp16", action="store_true", help="FP16 graph (TensorRT 11 takes precision from the graph)")
    p.add_argument("--no-features", action="store_true", help="classifiers: export logits only")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--parity-images",
        help="folder/archive/manifest of real images for the parity check (default: synthetic images)",
    )
    p.add_argument("--max-abs-diff", type=float, help="parity tolerance on outputs (default 1e-3; fp16 5e-2)")
    p.add_argument("--min-agreement", type=float, default=1.0, help="required top-1 (or mask) agreement")
    p.add_argument("--opt-batch", type=int, default=32, help="TensorRT: the batch kernels are tuned for")
    p.add_argument("--max-batch", type=int, default=256, help="TensorRT: the largest batch the engine accepts")
    p.add_argument(
        "--screen-config", help="TensorRT: take the opt batch from this screening config (classify/segment batch_size)"
    )
    p.set_defaults(func=cmd_convert)


def cmd_convert(a: argparse.Namespace) -> int:
    from conversion.convert import run
    from skinscan.config import ConvertConfig, validate

    cfg = validate(
        ConvertConfig,
        {
            "model": a.model,
            "to": a.to,
            "fp16": a.fp16,
            "with_features": not a.no_features,
            "opset": a.opset,
            "parity_images": a.parity_images,
            "max_abs_diff": a.max_abs_diff,
            "min_agreement": a.min_agreement,
            "opt_batch": a.opt_batch,
            "max_batch": a.max_batch,
            "screen_config": a.screen_config,
        },
    )
    stats = run(cfg)
    print(json.dumps(stats, indent=2))
    return 0
