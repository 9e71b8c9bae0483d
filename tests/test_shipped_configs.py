"""Every YAML in configs/ runs: loaded as shipped, then shrunk (data, size, epochs, resources) and run through the
same entry point the CLI and the Ray jobs call. The four files `skinscan demo` loads are run by the demo (the
session's `demo_checkout`, shrunk to 120 images) and checked here in its outputs; the others run here. Each test
prints what it changed; a config this machine cannot run would be a skip naming why (none is, today: GPU configs
shrink to CPU)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from skinscan.config import CONFIG_KINDS, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
RUN_BY_DEMO = {  # file -> the demo artefact made with it
    "configs/synth/demo.yaml": "screening input",
    "configs/train/tiny.yaml": "classifier bundle",
    "configs/train/unet_tiny.yaml": "segmenter bundle",
    "configs/screen/local_cpu.yaml": "screening results (Parquet)",
}
TINY = {"swin": {"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4}, "unet": {"base": 8}}


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory) -> dict[str, Path]:
    """Two ISIC-style folders: one with masks and metadata (as HAM10000), one without masks whose metadata CSV
    carries ISIC 2017's `source_split` (as the second source of ham_isic2017_cpu.yaml)."""
    import shutil

    from skinscan.config import SynthConfig
    from skinscan.data.synth import generate

    root = tmp_path_factory.mktemp("config_data")
    generate(SynthConfig(output=str(root / "first"), n_images=40, size=48, seed=1, metadata=True), progress=False)
    generate(SynthConfig(output=str(root / "second"), n_images=40, size=48, seed=2), progress=False)
    shutil.rmtree(root / "second" / "masks")
    meta = pd.read_csv(root / "second" / "ISIC_2019_Training_Metadata.csv")
    meta["source_split"] = ["validation" if i % 4 == 0 else "training" for i in range(len(meta))]
    meta.to_csv(root / "second" / "ISIC_2019_Training_Metadata.csv", index=False)
    return {"first": root / "first", "second": root / "second"}


def _shrink_data(data: dict, folder: Path) -> dict:
    """The same reader options on tiny data: a CSV source keeps its images/metadata keys, pointing at tiny files."""
    out = {**data, "source": str(folder / "ISIC_2019_Training_GroundTruth.csv")}
    if data.get("images"):
        out["images"] = str(folder / "images")
    if data.get("metadata") or data.get("where"):
        out["metadata"] = str(folder / "ISIC_2019_Training_Metadata.csv")
    return out


def _shrunk_train(path: Path, sources: dict[str, Path], tmp: Path) -> tuple[dict, list[str]]:
    import yaml

    raw = yaml.safe_load(path.read_text())
    changed = ["data: tiny synthetic sources", "epochs 1, 24 samples, 32 px, 1 worker"]
    raw["data"] = _shrink_data(raw["data"], sources["first"])
    raw["extra_data"] = [_shrink_data(d, sources["second"]) for d in raw.get("extra_data", [])]
    model = raw.setdefault("model", {})
    model["img_size"] = 32
    for prefix, kwargs in TINY.items():
        if model.get("name", "swin").startswith(prefix):
            model["kwargs"] = {**model.get("kwargs", {}), **kwargs}
            changed.append(f"{prefix} shrunk")
    if model.get("pretrained"):
        model["pretrained"] = False
        changed.append("random init (no weights download)")
    if raw.get("use_gpu"):
        raw["use_gpu"] = False
        raw["threads_per_worker"] = 1
        changed.append("CPU instead of GPU")
    raw.update(
        epochs=1,
        max_train_samples_per_epoch=24,
        batch_size=8,
        num_workers=1,
        storage_path=str(tmp / "ray"),
        output=str(tmp / "bundle"),
        time_budget_min=None,
    )
    return raw, changed


def _check_demo_ran(path: Path, demo_checkout) -> list[str]:
    """The demo's artefact made with `path`, and the settings of `path` it records."""
    import yaml

    repo, result = demo_checkout
    shipped = yaml.safe_load(path.read_text())
    art = {k: Path(v) for k, v in result["artefacts"].items()}
    demo = repo / "runs" / "demo"
    what = RUN_BY_DEMO[_id(path)]
    if what == "screening input":
        import zipfile

        with zipfile.ZipFile(demo / "synth.zip") as z:
            gt = pd.read_csv(z.open("ISIC_2019_Training_GroundTruth.csv"))
        present = {c for c in gt.columns[1:] if gt[c].sum() > 0}
        assert len(gt) == 120 and present == set(shipped["classes"])
    elif what.endswith("bundle"):
        used = yaml.safe_load((art[what] / "config.yaml").read_text())
        assert used["name"] == shipped["name"] and used["model"]["name"] == shipped["model"]["name"]
        assert used["task"] == shipped.get("task", "classify")
    else:
        used = yaml.safe_load((art[what].parent / "screen_config.yaml").read_text())
        assert used["classify"]["batch_size"] == shipped["classify"]["batch_size"]
        assert used["explain"] == shipped["explain"] and used["backend"] == shipped["backend"]
        assert len(pd.read_parquet(art[what])) == 120
    return [f"by skinscan demo (tests/test_demo.py): {what}, 120 images"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_shipped_config_runs_shrunk(path, tmp_path, request):
    import yaml

    kind = path.relative_to(ROOT / "configs").parts[0]
    model = CONFIG_KINDS[kind]
    load_config(model, path)  # as shipped: validates
    if _id(path) in RUN_BY_DEMO:
        changed = _check_demo_ran(path, request.getfixturevalue("demo_checkout"))
        kind = "checked"
    else:
        request.getfixturevalue("ray_local")
    if kind == "train":
        tiny_sources = request.getfixturevalue("tiny_sources")
        from skinscan.models.bundle import read_card
        from skinscan.training.driver import run

        raw, changed = _shrunk_train(path, tiny_sources, tmp_path)
        cfg = model.model_validate(raw)
        bundle = Path(run(cfg))
        card = read_card(bundle)
        assert card.task == cfg.task and (bundle / "model.safetensors").exists()
        if cfg.extra_data:  # both sources reached training
            manifest = pd.read_parquet(bundle / "train_manifest.parquet")
            assert manifest["source"].nunique() == 1 + len(cfg.extra_data)
    elif kind == "screen":
        from skinscan.screening.pipeline import screen

        tiny_bundles, synth_zip = request.getfixturevalue("tiny_bundles"), request.getfixturevalue("synth_zip")
        raw = yaml.safe_load(path.read_text())
        changed = ["tiny bundles and archive", "1 actor per stage"]
        raw.update(
            model=str(tiny_bundles["swin"]),
            segmenter=str(tiny_bundles["unet"]) if raw.get("segmenter") else None,
            input=str(synth_zip),
            output=str(tmp_path / "screen"),
            progress=False,
        )
        for stage in ("decode", "segment", "classify", "explainer"):
            if stage in raw:
                raw[stage] = {**raw[stage], "num_gpus": 0, "num_cpus": 0.25, "max_actors": None, "actors": 1}
                raw[stage] = {k: v for k, v in raw[stage].items() if v is not None}
                if stage == "decode":
                    raw[stage] = {k: v for k, v in raw[stage].items() if k not in ("actors", "max_actors")}
        if raw.get("device") == "cuda" or raw.get("backend") == "tensorrt" or raw.get("gpu_decode"):
            raw.update(device="cpu", backend="onnxruntime", gpu_decode=False)
            changed.append("CPU: onnxruntime instead of TensorRT, CPU decode")
        summary = screen(model.model_validate(raw))
        assert summary["rows"] == 120 and summary["complete"]
    elif kind == "synth":
        from skinscan.data.synth import generate

        raw = yaml.safe_load(path.read_text())
        changed = ["12 images of 32 px"]
        cfg = model.model_validate({**raw, "output": str(tmp_path / "synth.zip"), "n_images": 12, "size": 32})
        gt = generate(cfg, progress=False)
        assert len(gt) == 12 and (tmp_path / "synth.zip").stat().st_size > 0
    # listed at the end of the run by conftest.py (also from pytest-xdist workers, whose output is not shown)
    request.node.user_properties.append(("shipped_config", f"{_id(path)}: ran shrunk ({'; '.join(changed)})"))


def test_the_demo_loads_the_files_it_is_credited_with():
    demo = (ROOT / "skinscan" / "demo.py").read_text()
    for name in RUN_BY_DEMO:
        assert f'CONFIGS / "{name.removeprefix("configs/")}"' in demo, name


def test_every_config_folder_has_a_runner():
    kinds = {p.relative_to(ROOT / "configs").parts[0] for p in CONFIGS}
    assert kinds <= {"train", "screen", "synth"}, f"a config kind without a shrunk run in this test: {kinds}"
