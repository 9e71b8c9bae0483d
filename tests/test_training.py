"""Ray Train end to end on CPU: 2 workers, oversampling survives distribution, resume after a failure."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from skinscan.config import TrainConfig, load_config
from skinscan.models.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _overrides(tmp_path, synth_source, **over) -> list[str]:
    overrides = [f"data.source={synth_source}", f"storage_path={tmp_path / 'ray'}", f"output={tmp_path / 'bundle'}"]
    return overrides + [f"{k}={v}" for k, v in over.items()]


def _cfg(tmp_path, synth_source, **over):
    return load_config(TrainConfig, ROOT / "configs/train/tiny.yaml", _overrides(tmp_path, synth_source, **over))


@pytest.fixture(scope="module")
def train_synth(tmp_path_factory):
    from skinscan.config import SynthConfig
    from skinscan.data.synth import generate

    out = tmp_path_factory.mktemp("trainsynth") / "synth.zip"
    generate(SynthConfig(output=str(out), n_images=400, size=64, seed=0), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(ray_local, train_synth, tmp_path_factory):
    from skinscan.training import run

    tmp = tmp_path_factory.mktemp("train")
    return run(_cfg(tmp, train_synth))


RESUME_EPOCHS = 6  # the fault-tolerance runs: long enough to fail and resume mid-run, short enough to run often


@pytest.fixture(scope="module")
def reference(ray_local, train_synth, tmp_path_factory):
    """An uninterrupted run of the fault-tolerance tests' length: what a resumed run must end exactly like."""
    from skinscan.training import run

    return run(_cfg(tmp_path_factory.mktemp("reference"), train_synth, epochs=RESUME_EPOCHS))


def test_two_workers_learn_synthetic_data(trained):
    card = json.loads((trained / "model_card.json").read_text())
    assert card["validation_metrics"]["accuracy"] >= 0.9, card["validation_metrics"]
    assert card["training_config"]["num_workers"] == 2
    assert (trained / "training_curves.png").stat().st_size > 1000
    assert (trained / "train_manifest.parquet").exists() and (trained / "config.yaml").exists()


def test_bundle_ships_the_ema_weights_of_the_best_checkpoint(trained):
    card = json.loads((trained / "model_card.json").read_text())
    assert card["training_config"]["ema_decay"] == 0.99
    run_dir = Path(card["ray_run"]["storage_path"]) / card["ray_run"]["name"]
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in run_dir.glob("checkpoint_*/state.pt")]
    best = [s for s in states if s["epoch"] == card["best_epoch"]]
    assert best, f"best checkpoint (epoch {card['best_epoch']}) not kept in {run_dir}"
    model, _ = load_bundle(trained)
    shipped = model.state_dict()
    ema, raw = best[0]["ema"], best[0]["model"]
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert not all(torch.equal(ema[k], raw[k]) for k in ema), "EMA weights equal the raw weights: no averaging"


def test_workers_draw_balanced_classes(trained):
    history = json.loads((trained / "history.json").read_text())
    drawn = history[0]["drawn_per_worker"]
    assert len(drawn) == 2
    total = {c: sum(w.get(c, 0) for w in drawn) for c in drawn[0]}
    assert len(total) == 4  # every class drawn
    assert (max(total.values()) - min(total.values())) / max(total.values()) <= 0.10, total
    # the raw training split is imbalanced >= 3:1, so this balance comes from the sampler, not the data
    import pandas as pd

    train = pd.read_parquet(trained / "train_manifest.parquet").query("split == 'train'")
    counts = train["label"].value_counts()
    assert counts.max() / counts.min() >= 3


def test_bundle_loads_predicts_and_rejects_tampering(trained, tmp_path):
    import shutil

    from skinscan.errors import BundleError

    model, card = load_bundle(trained)
    x = torch.randn(2, 3, card.input_size, card.input_size)
    assert model(x).shape == (2, len(card.class_names))
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)


def test_resume_after_failure_selects_same_best(ray_local, train_synth, tmp_path, monkeypatch, reference):
    from skinscan.training import run
    from skinscan.training.loop import FAIL_ENV

    marker = tmp_path / "failed.marker"
    monkeypatch.setenv(FAIL_ENV, f"2:{marker}")
    bundle = run(_cfg(tmp_path, train_synth, max_failures=1, epochs=RESUME_EPOCHS))
    assert marker.exists(), "the injected failure did not happen"
    history = json.loads((bundle / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(RESUME_EPOCHS))
    resumed = json.loads((bundle / "model_card.json").read_text())
    straight = json.loads((reference / "model_card.json").read_text())
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["validation_metrics"]["balanced_accuracy"] == pytest.approx(
        straight["validation_metrics"]["balanced_accuracy"], abs=1e-9
    )
    m1, _ = load_bundle(bundle)
    m2, _ = load_bundle(reference)
    x = torch.randn(2, 3, 64, 64)
    assert np.allclose(m1(x).detach().numpy(), m2(x).detach().numpy(), atol=1e-4)


def test_failure_without_retries_is_a_clean_error(ray_local, train_synth, tmp_path, monkeypatch):
    from skinscan.errors import SkinScanError
    from skinscan.training import run
    from skinscan.training.loop import FAIL_ENV

    monkeypatch.setenv(FAIL_ENV, f"0:{tmp_path / 'm'}")
    with pytest.raises(SkinScanError, match="training failed"):
        run(_cfg(tmp_path, train_synth, max_failures=0, epochs=2))


def test_lesion_mask_head_learns_where_the_lesion_is(ray_local, train_synth, tmp_path):
    """With `lesion_mask_weight`, two workers train the classifier and the training-only mask head together: the
    head learns the lesion fraction of its cells, and the bundle is the plain classifier, which still learns."""
    import pandas as pd

    from skinscan.data.dataset import ImageDataset
    from skinscan.models import LogitsAndMask, create_model
    from skinscan.training import run

    cfg = _cfg(tmp_path, train_synth, lesion_mask_weight=1.0, epochs=10)
    bundle = run(cfg)
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["validation_metrics"]["accuracy"] >= 0.5, card["validation_metrics"]  # chance: 0.25
    model, _ = load_bundle(bundle)  # strict load: no mask head in the shipped weights
    assert not any("mask_head" in k for k in model.state_dict())

    run_dir = Path(card["ray_run"]["storage_path"]) / card["ray_run"]["name"]
    last = max(run_dir.glob("checkpoint_*/state.pt"), key=lambda p: p.parent.name)
    wrapped = LogitsAndMask(create_model(cfg.model, num_classes=len(card["class_names"])))
    wrapped.load_state_dict(torch.load(last, map_location="cpu", weights_only=True)["ema"])
    val = pd.read_parquet(bundle / "train_manifest.parquet").query("split == 'val'")
    ds = ImageDataset(val["uri"], None, 64, None, mask_uris=val["mask_uri"])
    x, masks = map(torch.stack, zip(*(ds[i] for i in range(len(ds)))))
    with torch.no_grad():
        predicted = torch.sigmoid(wrapped.eval()(x)[1])
    truth = torch.nn.functional.adaptive_avg_pool2d(masks, predicted.shape[-2:])
    err, constant = (predicted - truth).abs().mean(), (truth - truth.mean()).abs().mean()
    print(f"\nlesion fraction per cell: mean abs error {err:.3f}, predicting the mean {constant:.3f}")
    assert err < 0.8 * constant  # 10 tiny epochs; masks' alignment itself: test_lesion_mask.py


def test_segmenter_learns_synthetic_masks(ray_local, train_synth, tmp_path):
    from skinscan.training import run

    cfg = load_config(
        TrainConfig,
        ROOT / "configs/train/unet_tiny.yaml",
        [f"data.source={train_synth}", f"storage_path={tmp_path / 'ray'}", f"output={tmp_path / 'seg'}"],
    )
    bundle = run(cfg)
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["task"] == "segment" and card["validation_metrics"]["dice"] >= 0.7, card["validation_metrics"]
    model, _ = load_bundle(bundle)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    from skinscan.evaluation.segmentation import evaluate_segmenter

    held_out = evaluate_segmenter(
        bundle, str(bundle / "train_manifest.parquet"), tmp_path / "ev", "test", progress=False
    )
    assert held_out["n"] == 60 and held_out["dice"] >= 0.7 and held_out["leakage"]["overlapping"] == 0


def test_gradcam_energy_concentrates_in_the_lesion(trained, train_synth):
    """Localisation check: on synthetic images with exact masks, the trained model's Grad-CAM (fast path, equal to
    pytorch-grad-cam for this head) puts a larger share of its energy inside the lesion than the lesion's area."""
    import pandas as pd

    from skinscan.data.masks import mask_uri_for
    from skinscan.evaluation.localization import localization_check

    df = pd.read_parquet(trained / "train_manifest.parquet").query("split != 'train'")
    rep = localization_check(trained, df["uri"].tolist(), [mask_uri_for(u) for u in df["uri"]], "fast")
    print(f"\nGrad-CAM energy in lesion {rep['energy_in_lesion']:.3f} vs lesion area {rep['lesion_area']:.3f}")
    assert rep["n"] == len(df) and rep["energy_in_lesion"] > rep["lesion_area"], rep


def test_ctrl_c_then_resume_ends_like_an_uninterrupted_run(ray_local, reference, train_synth, tmp_path, capsys):
    """Ray Train's SIGINT handler exits from inside fit(): the CLI says so, exits 130 and names the run; a second
    command with `--resume` continues it from its last checkpoint and selects what an uninterrupted run selects.
    Both commands join this session's Ray (as on a cluster), so neither pays for starting one."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from skinscan.cli import main

    train = ["train", "--config", str(ROOT / "configs/train/tiny.yaml")]
    for item in _overrides(tmp_path, train_synth, epochs=RESUME_EPOCHS):
        train += ["--set", item]
    args = [sys.executable, "-m", "skinscan.cli", *train]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait for the first finished epoch, so the run is really under way
        lines.append(line)
        if "[train] epoch 1/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    text = "".join(lines) + out
    assert proc.returncode == 130, text[-2000:]
    assert "interrupted, no bundle written; checkpoints:" in text
    assert "skinscan: interrupted" in text
    # our own process prints no traceback (Ray's actors may log theirs, prefixed "(ActorName pid=...)", on shutdown)
    assert not any(line.startswith("Traceback") for line in text.splitlines())
    assert not (tmp_path / "bundle" / "model.safetensors").exists()
    run_name = re.search(r"--resume (\S+)", text).group(1)

    capsys.readouterr()  # the refusals come before Ray is needed: checked through the CLI's entry point here
    assert main([*train, "--set", "lr=0.01", "--resume", run_name]) == 2
    assert "config differs from that run's: lr: 0.001 -> 0.01" in capsys.readouterr().err
    assert main([*train, "--resume", "no-such-run"]) == 2
    assert "--resume no-such-run: no such run" in capsys.readouterr().err

    resumed = subprocess.run([*args, "--resume", run_name], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert re.search(r"resumed from checkpoint after epoch [1-9]", resumed.stdout + resumed.stderr)
    history = json.loads((tmp_path / "bundle" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(RESUME_EPOCHS))
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    straight = json.loads((reference / "model_card.json").read_text())
    assert card["ray_run"]["name"] == run_name and card["best_epoch"] == straight["best_epoch"]
    assert card["validation_metrics"]["balanced_accuracy"] == pytest.approx(
        straight["validation_metrics"]["balanced_accuracy"], abs=1e-9
    )


def test_time_budget_flag_lives_where_the_backend_reduces(tmp_path):
    """NCCL reduces only CUDA tensors (a CPU flag fails there); gloo only CPU ones. Checked for real under gloo."""
    import time as _time

    import torch.distributed as dist

    from skinscan.training.loop import _over_budget, flag_device

    cuda = torch.device("cuda", 0)
    assert flag_device("nccl", cuda) == cuda
    assert flag_device("gloo", cuda) == torch.device("cpu") and flag_device(None, cuda) == torch.device("cpu")
    cfg = TrainConfig.model_validate({"time_budget_min": 1.0})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _over_budget(cfg, _time.time() - 45, 1, torch.device("cpu"))  # 45 s per epoch: a second one won't fit
        assert not _over_budget(cfg, _time.time() - 5, 1, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_loader_processes_and_a_bounded_image_cache(synth_zip):
    from skinscan.data.dataset import ImageDataset
    from skinscan.training.driver import prepare_data
    from skinscan.training.loop import make_loaders

    cfg = TrainConfig.model_validate(
        {"data": {"source": str(synth_zip), "hash": False}, "model": {"name": "resnet18", "img_size": 32}}
    )
    assert cfg.loader_processes == 0  # CPU workers: their CPUs run the model
    gpu = cfg.model_copy(update={"use_gpu": True, "threads_per_worker": 8})
    assert gpu.loader_processes == 7 and gpu.model_copy(update={"loader_workers": 2}).loader_processes == 2
    df, classes = prepare_data(cfg)
    rows = {s: df.loc[df["split"] == s, ["image_id", "uri", "label"]].to_dict("records") for s in ("train", "val")}
    config = {"classes": classes, **rows}
    labels = {}
    for n in (0, 2):
        loader, sampler, _ = make_loaders(cfg.model_copy(update={"loader_workers": n}), config, 0, 1)
        sampler.set_epoch(0)
        labels[n] = sorted(y for _, ys in loader for y in ys.tolist())
        assert loader.dataset.cache  # 120 images at 37 px fit easily
    assert labels[0] == labels[2]  # the same oversampled epoch, decoded in 2 processes
    tiny = cfg.model_copy(update={"cache_max_mb": 0.01})
    loader, _, val = make_loaders(tiny, config, 0, 1)
    assert not loader.dataset.cache and not val.dataset.dataset.cache  # does not fit: not cached at all
    ds = ImageDataset(df["uri"][:10], None, 32, cache_limit_mb=3 * 32 * 32 * 3 / 2**20)
    for i in range(10):
        ds[i]
    assert len(ds._img) == 3 and ds.cached_bytes == 3 * 32 * 32 * 3  # the bound holds


def test_a_wrong_cluster_address_is_one_line_and_leaves_no_run_behind(train_synth, tmp_path):
    """`skinscan train --address` to nothing fails within the connect bound, in one line, before a run record is
    written (so the same command works once the cluster is up, without --resume)."""
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "skinscan.cli", "train", "--config", str(ROOT / "configs/train/tiny.yaml")]
    for item in _overrides(tmp_path, train_synth, connect_timeout_s=5):
        args += ["--set", item]
    t0 = time.time()
    r = subprocess.run([*args, "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("skinscan: error: cannot reach a Ray cluster at 127.0.0.1:1"), lines[0]
    assert time.time() - t0 < 60
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").rglob("*")), "a run record was written"
