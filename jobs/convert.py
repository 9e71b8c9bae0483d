"""Ray job: convert a model bundle to ONNX or TensorRT and check parity.

ray job submit --working-dir . -- python jobs/convert.py --model BUNDLE --to onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parity_batch(card: dict, source: str | None, n: int = 16):
    """Preprocessed images for parity checks: real ones from `source`, else synthetic."""
    import numpy as np

    from skinscan.imageio import read_image, resize_square
    from skinscan.transforms import normalize_batch

    size = card["input_size"]
    if source:
        from skinscan.config import DataConfig
        from skinscan.manifest import build_manifest

        uris = build_manifest(DataConfig(source=source, hash=False))["uri"].head(n).tolist()
        arrs = [resize_square(read_image(u, draft_size=size), size) for u in uris]
    else:
        from skinscan.synth import render

        classes = [c for c in card.get("class_names", []) if c != "UNK"] or ["NV", "MEL"]
        arrs = [render(classes[i % len(classes)], size, np.random.default_rng(i))[0] for i in range(n)]
    return normalize_batch(np.stack(arrs))


def run(cfg: dict) -> dict:
    from conversion.onnx_export import check_parity, export_onnx
    from skinscan.bundle import read_card, update_card

    bundle = Path(cfg["model"])
    card = read_card(bundle)
    fp16 = bool(cfg.get("fp16"))
    tol = cfg.get("max_abs_diff") or (5e-2 if fp16 else 1e-3)
    min_agree = cfg.get("min_agreement", 1.0)
    images = parity_batch(card, cfg.get("parity_images"))
    onnx_file = export_onnx(bundle, with_features=cfg.get("with_features", True), opset=cfg.get("opset", 18), fp16=fp16)
    stats = {"onnx": str(onnx_file), "onnx_parity": check_parity(bundle, images, "onnxruntime", fp16, tol, min_agree)}
    if cfg.get("to") == "tensorrt":
        from conversion.tensorrt_build import build_engine
        from skinscan.bundle import file_sha256

        engine = bundle / ("model.fp16.engine" if fp16 else "model.engine")
        build_engine(onnx_file, engine)
        exports = read_card(bundle).get("exports", {})
        exports["tensorrt_fp16" if fp16 else "tensorrt"] = {
            "file": engine.name,
            "sha256": file_sha256(engine),
            "from": onnx_file.name,
        }
        update_card(bundle, exports=exports)
        stats["tensorrt"] = str(engine)
        stats["tensorrt_parity"] = check_parity(bundle, images, "tensorrt", fp16, tol, min_agree)
    return stats


def main(argv: list[str] | None = None) -> int:
    from skinscan.cli import main as cli_main

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--to", default="onnx")
    p.add_argument("--fp16", action="store_true")
    a, rest = p.parse_known_args(argv)
    return cli_main(["convert", "--model", a.model, "--to", a.to, *(["--fp16"] if a.fp16 else []), *rest])


if __name__ == "__main__":
    from skinscan.cli import run_job_from_env
    from skinscan.jobs_client import ConvertJob

    if "--from-env" in sys.argv:  # submitted with `skinscan submit`
        sys.exit(run_job_from_env(ConvertJob, lambda cfg: print(run(cfg.model_dump()))))
    sys.exit(main())
