"""`skinscan demo`: the whole system end to end on a local Ray, CPU only, no network, no data needed.

synthetic archive (or --data) -> tiny Swin trained with Ray Train -> ONNX export + parity check -> small U-Net
-> screening with Ray Data (segmentation, classification, explanations) -> evaluation -> HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from skinscan.config import ScreenConfig, SynthConfig, TrainConfig, load_config
from skinscan.data import storage
from skinscan.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _step(n: int, total: int, text: str) -> float:
    print(f"\n=== [{n}/{total}] {text}", flush=True)
    return time.time()


def screening_input(data: str) -> str:
    """The images of a dataset: its images/ folder (or archive member folder) when it has one."""
    data = storage.normalize(data)
    if storage.archive_kind(data):
        names = storage.list_files(data)
        return f"{storage.archive_kind(data)[0]}://images::{data}" if any("://images/" in n for n in names) else data
    if storage.is_dir(storage.join(data, "images")):
        return storage.join(data, "images")
    return data


def run(
    workdir: str = "runs/demo",
    data: str | None = None,
    n_images: int = 400,
    epochs: int | None = None,
    img_size: int | None = None,
    seg_epochs: int | None = None,
    progress: bool = True,
) -> dict:

    from conversion.convert import run as convert
    from skinscan.config import ConvertConfig
    from skinscan.data.synth import generate
    from skinscan.evaluation.classifier import evaluate
    from skinscan.ray_connect import connect
    from skinscan.screening.pipeline import print_summary, screen
    from skinscan.screening.report import write_report
    from skinscan.training import run as train

    t_start = time.time()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    total = 7
    times: dict[str, float] = {}

    t = _step(1, total, "data")
    if data:
        source = storage.normalize(data)
        if not storage.exists(source):
            raise DataError(f"--data {data}: not found")
        print(f"using {source}")
    else:
        source = str(work / "synth.zip")
        cfg = load_config(
            SynthConfig, CONFIGS / "synth/demo.yaml", [f"output={source}", f"n_images={n_images}", "size=64"]
        )
        gt = generate(cfg, progress=progress)
        print(f"{len(gt)} synthetic images with masks -> {source}")
    times["data"] = time.time() - t
    connect(None, 30, log_to_driver=True)  # RAY_ADDRESS, or a Ray of its own

    t = _step(2, total, "train the tiny Swin classifier with Ray Train (2 CPU workers)")
    over = [f"data.source={source}", f"output={work / 'classifier'}", f"storage_path={work / 'ray'}"]
    if data:  # real archives are larger and far more imbalanced: cap each (oversampled) epoch
        over.append("max_train_samples_per_epoch=4000")
    if epochs:
        over.append(f"epochs={epochs}")
    if img_size:
        over.append(f"model.img_size={img_size}")
    classifier = train(load_config(TrainConfig, CONFIGS / "train/tiny.yaml", over))
    times["train_classifier"] = time.time() - t

    t = _step(3, total, "export to ONNX and check parity against PyTorch")
    stats = convert(ConvertConfig(model=str(classifier)))
    p = stats["onnx_parity"]
    print(f"ONNX parity: max |logit diff| {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.3f}")
    times["convert"] = time.time() - t

    t = _step(4, total, "train the U-Net lesion segmenter")
    over = [f"data.source={source}", f"output={work / 'segmenter'}", f"storage_path={work / 'ray'}"]
    if data:
        over.append("max_train_samples_per_epoch=2000")
    if seg_epochs:
        over.append(f"epochs={seg_epochs}")
    segmenter = train(load_config(TrainConfig, CONFIGS / "train/unet_tiny.yaml", over))
    convert(ConvertConfig(model=str(segmenter)))
    times["train_segmenter"] = time.time() - t

    t = _step(5, total, "screen the archive with Ray Data (segment, classify, explain)")
    screen_out = work / "screen"
    shutil.rmtree(screen_out, ignore_errors=True)  # rows of an earlier demo's model would not be this model's
    cfg = load_config(
        ScreenConfig,
        CONFIGS / "screen/local_cpu.yaml",
        [
            f"model={classifier}",
            f"segmenter={segmenter}",
            f"input={screening_input(source)}",
            f"output={screen_out}",
            f"progress={str(progress).lower()}",
        ],
    )
    summary = screen(cfg)
    print_summary(summary)
    times["screen"] = time.time() - t

    t = _step(6, total, "evaluate on the held-out test split (raw and oversampled)")
    ev = evaluate(
        classifier, str(classifier / "train_manifest.parquet"), work / "evaluation", split="test", progress=progress
    )
    raw = ev["raw"]
    print(
        f"test: accuracy {raw['accuracy']:.3f}, balanced accuracy {raw['balanced_accuracy']:.3f}, "
        f"macro F1 {raw['macro_avg']['f1']:.3f} (n={raw['n']}; majority baseline accuracy "
        f"{ev['majority_baseline']['accuracy']:.3f})"
    )
    times["evaluate"] = time.time() - t

    t = _step(7, total, "HTML report")
    report = write_report(str(screen_out))
    times["report"] = time.time() - t
    wall = time.time() - t_start
    artefacts = {
        "classifier bundle": str(classifier),
        "ONNX model": str(classifier / "model.onnx"),
        "segmenter bundle": str(segmenter),
        "screening results (Parquet)": str(screen_out / "results"),
        "evaluation": str(work / "evaluation" / "evaluation.md"),
        "report": str(report),
    }
    result = {
        "wall_s": round(wall, 1),
        "steps_s": {k: round(v, 1) for k, v in times.items()},
        "artefacts": artefacts,
        "screen": summary,
        "test_metrics": {
            "accuracy": raw["accuracy"],
            "balanced_accuracy": raw["balanced_accuracy"],
            "macro_f1": raw["macro_avg"]["f1"],
        },
    }
    (work / "demo_summary.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\n=== done in {wall / 60:.1f} min")
    width = max(len(k) for k in artefacts)
    for k, v in artefacts.items():
        print(f"  {k:<{width}}  {v}")
    print(f"\nOpen the report: xdg-open {report}   (or file://{report} in any browser)")
    print(
        f"Read the results: python -c \"import pandas as pd; print(pd.read_parquet('{screen_out / 'results'}')"
        f"[['image_id','predicted_class','confidence','flagged']])\""
    )
    return result
