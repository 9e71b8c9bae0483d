"""Segmenter evaluation: mean Dice and Jaccard (IoU) against ground-truth masks on a held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skinscan.errors import DataError


def evaluate_segmenter(
    bundle: str | Path,
    data: str,
    output: str | Path,
    split: str | None = "test",
    backend: str = "onnxruntime",
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    from conversion.onnx_export import ensure_onnx
    from skinscan.data import storage
    from skinscan.data.masks import mask_uri_for, read_mask
    from skinscan.data.preprocess import load_batch
    from skinscan.evaluation.classifier import leakage_check, select_eval_set
    from skinscan.evaluation.metrics import dice_iou
    from skinscan.models.bundle import local_bundle
    from skinscan.runtime import create_predictor

    bundle = local_bundle(bundle)
    df = select_eval_set(bundle, data, split)
    df = df[df["uri"].map(lambda u: storage.exists(mask_uri_for(u)))].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{data}: no images with masks (masks/<image_id>_segmentation.png) in split {split}")
    leakage = leakage_check(bundle, df)
    if backend == "onnxruntime":
        ensure_onnx(bundle)
    pred = create_predictor(bundle, backend, with_features=False)
    size = pred.card.input_size
    dices, ious = [], []
    for i in tqdm(range(0, len(df), batch_size), desc="evaluate segmenter", disable=not progress):
        uris = df["uri"].iloc[i : i + batch_size].tolist()
        x = load_batch(uris, size, pred.card.normalization)
        masks = pred.predict(x).outputs[0][:, 0] > 0
        truth = np.stack([read_mask(mask_uri_for(u), size) for u in uris]).astype(bool)
        for p, t in zip(masks, truth):
            d, j = dice_iou(p[None], t[None])
            dices.append(d)
            ious.append(j)
    result = {
        "model": str(bundle),
        "data": data,
        "split": split,
        "n": len(dices),
        "input_size": size,
        "dice": float(np.mean(dices)),
        "iou": float(np.mean(ious)),
        "dice_median": float(np.median(dices)),
        "leakage": leakage,
    }
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segmentation.json").write_text(json.dumps(result, indent=2))
    return result
