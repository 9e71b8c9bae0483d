"""`skinscan demo`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on synthetic data (or --data): train, convert, screen, report")
    p.add_argument("--workdir", default="runs/demo", help="where every artefact goes")
    p.add_argument("--data", help="use this dataset instead of synthetic data (e.g. ../shared/data/ham10000_200)")
    p.add_argument("--n-images", type=int, default=400, help="synthetic images")
    p.add_argument("--epochs", type=int, help="classifier epochs (default: configs/train/tiny.yaml)")
    p.add_argument("--seg-epochs", type=int, help="segmenter epochs (default: configs/train/unet_tiny.yaml)")
    p.add_argument("--img-size", type=int, help="classifier input size (default 64)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    from skinscan.demo import run

    run(a.workdir, a.data, a.n_images, a.epochs, a.img_size, a.seg_epochs, progress=not a.quiet)
    return 0
