"""`skinscan explain`: overlays for images, or the localisation check over a dataset with masks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

import numpy as np

from skinscan.config import ExplainMethod
from skinscan.errors import ConfigError, ImageDecodeError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM / fast CAM / Swin attention overlays for images")
    p.add_argument("images", nargs="*", help="image files or URIs")
    p.add_argument("--model", required=True, help="classifier bundle")
    p.add_argument(
        "--method",
        default="fast",
        choices=list(get_args(ExplainMethod)),
        help="fast: forward-only CAM (= Grad-CAM for avg-pool + linear heads); gradcam..layercam: pytorch-grad-cam; "
        "attention: Swin attention maps (skinscan.explain.registry)",
    )
    p.add_argument("--class", dest="cls", help="explain this class instead of the predicted one")
    p.add_argument("--segmenter", help="U-Net bundle: draw the lesion contour")
    p.add_argument("-o", "--output", default="runs/explain", help="folder for the overlay PNGs")
    p.add_argument(
        "--localization",
        metavar="DATA",
        help="instead: energy-in-lesion check over a dataset with masks/ (synthetic or HAM10000)",
    )
    p.add_argument("--n", type=int, default=200, help="images for --localization")
    p.set_defaults(func=cmd_explain)


def cmd_explain(a: argparse.Namespace) -> int:
    import torch

    from skinscan.data import storage
    from skinscan.data.imageio import read_image, resize_square
    from skinscan.data.preprocess import normalize_batch
    from skinscan.explain.overlay import overlay, save_png
    from skinscan.explain.registry import explain, get_method
    from skinscan.models.bundle import load_bundle
    from skinscan.models.calibration import card_probs

    if a.localization:
        from skinscan.config import DataConfig
        from skinscan.data.manifest import build_manifest
        from skinscan.data.masks import mask_uri_for
        from skinscan.evaluation.localization import localization_check

        df = build_manifest(DataConfig(source=a.localization, hash=False)).head(a.n)
        rep = localization_check(a.model, df["uri"].tolist(), [mask_uri_for(u) for u in df["uri"]], a.method)
        print(json.dumps(rep, indent=2))
        return 0
    if not a.images:
        raise ConfigError("give image files to explain, or --localization DATA")
    model, card = load_bundle(a.model)
    if card.task != "classify":
        raise ConfigError(f"{a.model} is a {card.task} bundle; --model needs a classifier")
    get_method(a.method, card.architecture.name)
    names = card.class_names
    if a.cls and a.cls not in names:
        raise ConfigError(f"--class {a.cls}: the model knows {names}")
    seg = load_bundle(a.segmenter)[0] if a.segmenter else None
    size = card.input_size
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    for uri in a.images:
        try:
            im = read_image(uri)
        except ImageDecodeError as err:
            print(f"skipped {err}")
            continue
        x = torch.from_numpy(normalize_batch(resize_square(im, size)[None], card.normalization))
        with torch.no_grad():
            logits = model(x).numpy()
        probs = card_probs(card, logits)[0]
        cls = names.index(a.cls) if a.cls else int(logits[0].argmax())  # the balanced decision (decision_scores)
        heat = explain(a.method, model, x, [cls], out_size=(size, size))[0]
        mask = None
        if seg is not None:
            with torch.no_grad():
                mask = (seg(x)[0, 0] > 0).numpy()
        full = np.asarray(im)
        path = out / f"{storage.stem(uri)}_{a.method.replace('+', 'p')}_{names[cls]}.png"
        save_png(np.concatenate([full, overlay(full, heat, mask)], axis=1), path)
        top = ", ".join(f"{names[i]} {probs[i]:.2f}" for i in np.argsort(-probs)[:3])
        print(f"{uri}: {top} -> {path}")
    return 0
