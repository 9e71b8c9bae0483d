"""Parity of converted models: the same preprocessed batch through PyTorch and another backend, within a
tolerance, recorded in the bundle's card."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skinscan.data.preprocess import load_batch, normalize_batch
from skinscan.errors import SkinScanError
from skinscan.models.bundle import ModelCard, read_card, record_parity
from skinscan.runtime import create_predictor


class ParityError(SkinScanError):
    """A converted model's outputs differ from PyTorch's beyond the configured tolerance."""


def parity_batch(card: ModelCard, source: str | None, n: int = 16) -> np.ndarray:
    """Model input for parity checks: the first `n` real images of `source` (folder, archive, manifest) through
    the one input path, else `n` synthetic lesions."""
    size = card.input_size
    if source:
        from skinscan.config import DataConfig
        from skinscan.data.manifest import build_manifest

        uris = build_manifest(DataConfig(source=source, hash=False))["uri"].head(n).tolist()
        return load_batch(uris, size, card.normalization)
    from skinscan.data.synth import render

    classes = [c for c in card.class_names if c != "UNK"] or ["NV", "MEL"]
    arrs = [render(classes[i % len(classes)], size, np.random.default_rng(i))[0] for i in range(n)]
    return normalize_batch(np.stack(arrs), card.normalization)


def parity_metadata(n: int) -> np.ndarray:
    """Encoded metadata for a parity batch: every field known in most rows, none in every fourth (image-only)."""
    from skinscan.data.metadata import SITES, encode_row

    rng = np.random.default_rng(0)
    rows = [encode_row(rng.integers(10, 90), rng.choice(["male", "female"]), rng.choice(SITES)) for _ in range(n)]
    meta = np.stack(rows)
    meta[::4] = 0
    return meta


def compare_outputs(ref: list[np.ndarray], got: list[np.ndarray], task: str) -> dict:
    """max |diff| per output and top-1 agreement (classifiers) or mask agreement (segmenters)."""
    stats = {
        "max_abs_diff": float(max(np.abs(r.astype(np.float64) - g.astype(np.float64)).max() for r, g in zip(ref, got))),
        "n": int(len(ref[0])),
    }
    if task == "segment":
        stats["mask_agreement"] = float(((ref[0] > 0) == (got[0] > 0)).mean())
    else:
        stats["top1_agreement"] = float((ref[0].argmax(1) == got[0].argmax(1)).mean())
    return stats


def check_parity(
    bundle: str | Path,
    images: np.ndarray,
    backend: str = "onnxruntime",
    fp16: bool = False,
    max_abs_diff: float = 1e-3,
    min_agreement: float = 1.0,
    record: bool = True,
) -> dict:
    """Run the same preprocessed batch (NCHW float32) through PyTorch and `backend`; raise ParityError on drift."""
    ref = create_predictor(bundle, "torch", with_features=False)
    other = create_predictor(bundle, backend, with_features=False, fp16=fp16)
    meta = parity_metadata(len(images)) if ref.card.uses_metadata else None  # the fused path, not just the image's
    r, g = ref.predict(images, meta), other.predict(images, meta)
    stats = compare_outputs([r.outputs[0]], [g.outputs[0]], read_card(bundle).task)
    stats.update({"backend": backend, "fp16": fp16, "tolerance": max_abs_diff, "min_agreement": min_agreement})
    agreement = stats.get("top1_agreement", stats.get("mask_agreement"))
    stats["passed"] = bool(stats["max_abs_diff"] <= max_abs_diff and agreement >= min_agreement)
    if record:
        record_parity(bundle, f"{backend}{'_fp16' if fp16 else ''}", stats)
    if not stats["passed"]:
        raise ParityError(
            f"{backend} parity failed: max |diff| {stats['max_abs_diff']:.3g} (tolerance "
            f"{max_abs_diff}), agreement {agreement:.3f} (required {min_agreement})"
        )
    return stats
