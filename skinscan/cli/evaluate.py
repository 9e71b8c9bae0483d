"""`skinscan evaluate` and `skinscan calibrate`."""

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
    p.add_argument("--bootstrap", type=int, default=1000, help="lesion-bootstrap draws for 95%% intervals (0: none)")
    p.add_argument(
        "--external",
        action="append",
        metavar="NAME=DATA",
        help="a data set from another clinic, never trained on (repeatable): its own folder and table row",
    )
    p.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("calibrate", help="temperature scaling + operating points on validation, into the card")
    c.add_argument("--model", required=True, help="classifier bundle (local)")
    c.add_argument("--data", help="labelled data (default: the bundle's training manifest)")
    c.add_argument("--split", default="val", help="the validation split to fit on (default: val; never test)")
    c.add_argument("--backend", default="torch", choices=["onnxruntime", "torch", "tensorrt"])
    c.add_argument(
        "--target",
        action="append",
        metavar="NAME=SENS",
        help="operating point and its validation sensitivity, e.g. MEL=0.9 or malignant=0.95 (repeatable; "
        "default MEL=0.9 and malignant=0.9)",
    )
    c.add_argument("--bootstrap", type=int, default=1000, help="lesion-bootstrap draws for the interval")
    c.add_argument(
        "--prior",
        default="bias",
        choices=["bias", "none"],
        help="undo the training prior with class offsets beside the temperature (default), or the temperature alone",
    )
    c.add_argument(
        "--confidence",
        default="0.95",
        help="choose thresholds so that each target holds at this confidence (default 0.95: its one-sided lower "
        "bound on validation reaches it); 'none': the point estimate reaches it",
    )
    c.add_argument(
        "--choice",
        default="joint",
        choices=["joint", "alone"],
        help="two points chosen together for the flag as deployed, fewest negatives flagged (default), or each "
        "reaching its target by itself",
    )
    c.set_defaults(func=cmd_calibrate)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from skinscan.config import EvaluateConfig, validate
    from skinscan.errors import ConfigError
    from skinscan.evaluation.run import run

    fields = ("model", "data", "split", "output", "allow_overlap", "backend", "bootstrap")
    cfg = {k: getattr(a, k) for k in fields}
    for item in a.external or []:
        name, sep, data = item.partition("=")
        if not sep or not name or not data:
            raise ConfigError(f"--external {item}: expected NAME=DATA, e.g. isic2017=../isic2017/val.csv")
        cfg.setdefault("external", {})[name] = data
    run(validate(EvaluateConfig, cfg))
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from skinscan.config import CalibrateConfig, validate
    from skinscan.errors import ConfigError
    from skinscan.evaluation.calibrate import run

    cfg = {k: getattr(a, k) for k in ("model", "data", "backend", "bootstrap", "prior")}
    cfg["split"] = a.split or None
    if a.target:
        targets = {}
        for item in a.target:
            name, _, value = item.partition("=")
            try:
                targets[name] = float(value)
            except ValueError:
                raise ConfigError(f"--target {item}: expected NAME=SENSITIVITY, e.g. MEL=0.9") from None
        cfg["flag"] = {"target_sensitivity": targets}
    if a.confidence.lower() == "none":
        cfg.setdefault("flag", {})["confidence"] = None
    else:
        try:
            cfg.setdefault("flag", {})["confidence"] = float(a.confidence)
        except ValueError:
            raise ConfigError(f"--confidence {a.confidence}: expected a number in (0.5, 1) or none") from None
    cfg.setdefault("flag", {})["choice"] = a.choice
    run(validate(CalibrateConfig, cfg))
    return 0
