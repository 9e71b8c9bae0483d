"""Models on object storage and offline: bundles written to and read from S3, pretrained weights from a path or a
URI (fetched once per node, checked tensor by tensor), and a bundle built after training with no network."""

from __future__ import annotations

import socket

import pytest
import torch
from conftest import TINY_SWIN, make_bundle, use_s3

from skinscan.config import ModelConfig, TrainConfig
from skinscan.errors import BundleError
from skinscan.models import create_model
from skinscan.models.bundle import load_bundle, publish_bundle, read_card


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bundle_on_s3_reloads_bit_identical(s3_server, tmp_path, monkeypatch):
    endpoint, _ = s3_server
    use_s3(monkeypatch, endpoint)
    monkeypatch.setenv("SKINSCAN_CACHE", str(tmp_path / "cache"))
    local = make_bundle(tmp_path / "b", size=32)
    publish_bundle(local, "s3://skinscan-test/bundles/tiny")
    remote_model, remote_card = load_bundle("s3://skinscan-test/bundles/tiny")
    local_model, local_card = load_bundle(local)
    assert _same_weights(remote_model, local_model)
    assert remote_card == local_card and read_card("s3://skinscan-test/bundles/tiny").weights_sha256
    # a changed remote bundle is fetched again, not served stale from the node cache
    publish_bundle(make_bundle(tmp_path / "c", size=32, seed=1), "s3://skinscan-test/bundles/tiny")
    assert not _same_weights(load_bundle("s3://skinscan-test/bundles/tiny")[0], local_model)


def test_driver_writes_the_bundle_to_s3_and_reads_it_back(s3_server, tmp_path, monkeypatch):
    from skinscan.training.driver import write_bundle

    endpoint, fs = s3_server
    use_s3(monkeypatch, endpoint)
    monkeypatch.setenv("SKINSCAN_CACHE", str(tmp_path / "cache"))
    cfg, staging, args, trained = _trained_state(tmp_path, output="s3://skinscan-test/bundles/trained")
    assert write_bundle(cfg, staging, *args) == "s3://skinscan-test/bundles/trained"
    assert {"model.safetensors", "model_card.json", "history.json"} <= {
        p.rsplit("/", 1)[-1] for p in fs.ls("skinscan-test/bundles/trained")
    }
    assert _same_weights(load_bundle("s3://skinscan-test/bundles/trained")[0], trained)


def _trained_state(tmp_path, output: str, pretrained=False):
    """What the driver has after Ray Train: a config, a staging folder and the best checkpoint's state."""
    import pandas as pd

    cfg = TrainConfig.model_validate(
        {
            "model": {
                "name": "swin_tiny_patch4_window7_224",
                "img_size": 32,
                "kwargs": TINY_SWIN,
                "pretrained": pretrained,
            },
            "output": output,
            "calibrate": False,  # these images do not exist: calibration is tested in test_operating_points
        }
    )
    trained = create_model(cfg.model.model_copy(update={"pretrained": False}), num_classes=2)
    history = [
        {"epoch": 0, "accuracy": 0.5, "balanced_accuracy": 0.5, "best_epoch": 0, "val_loss": 1.0, "train_loss": 1.0}
    ]
    state = {"model": trained.state_dict(), "ema": None, "epoch": 0, "history": history, "best": {"score": 0.5}}
    df = pd.DataFrame({"image_id": ["a", "b"], "label": ["MEL", "NV"], "split": ["train", "val"], "sha256": ["1", "2"]})
    staging = tmp_path / "staging"
    staging.mkdir()
    return cfg, staging, (["MEL", "NV"], df, state, history, 1.0, "run-1"), trained


def test_bundle_after_training_makes_no_network_call(tmp_path, monkeypatch):
    """`pretrained: true` would download hub weights; after training the driver must build from the state alone."""
    from skinscan.training.driver import write_bundle

    calls = []

    def refuse(self, address, *a, **k):
        calls.append(address)
        raise OSError(f"network blocked by the test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    cfg, staging, args, trained = _trained_state(tmp_path, output=str(tmp_path / "bundle"), pretrained=True)
    out = write_bundle(cfg, staging, *args)
    assert calls == []
    assert _same_weights(load_bundle(out)[0], trained)


def test_pretrained_weights_from_a_uri_are_fetched_once_per_node(tmp_path, monkeypatch, capsys):
    import fsspec
    from safetensors.torch import save_file

    from skinscan.data import storage

    monkeypatch.setenv("SKINSCAN_CACHE", str(tmp_path / "cache"))
    cfg = ModelConfig(name="resnet18", img_size=32)
    source = create_model(cfg, num_classes=5)  # another head: re-initialised, backbone loaded
    local = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(local))
    with fsspec.open("memory://weights/w.safetensors", "wb") as f:
        f.write(local.read_bytes())
    reads = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(uri) or real_read(uri))
    for _ in range(2):
        model = create_model(cfg.model_copy(update={"pretrained": "memory://weights/w.safetensors"}), num_classes=8)
        assert torch.equal(model.conv1.weight, source.conv1.weight)
        assert model.fc.weight.shape == (8, 512)
    assert reads == ["memory://weights/w.safetensors"], "fetched once, then served from the node cache"
    assert "tensors loaded (all 120 backbone tensors)" in capsys.readouterr().out
    assert torch.equal(
        create_model(cfg.model_copy(update={"pretrained": str(local)}), 8).conv1.weight, source.conv1.weight
    )


def test_pretrained_weights_of_another_architecture_are_refused_with_the_count(tmp_path):
    from safetensors.torch import save_file

    other = create_model(ModelConfig(name="resnet10t", img_size=32), num_classes=2)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(BundleError, match=r"only \d+ of 120 backbone tensors of ResNet match"):
        create_model(ModelConfig(name="resnet18", img_size=32, pretrained=str(path)), num_classes=2)


def test_a_card_from_a_newer_skinscan_is_refused_and_calibrating_an_old_one_upgrades_it(tmp_path):
    """A newer card may mean something this version would misread (version 2 added class offsets and jointly chosen
    points): one line naming the versions. Recalibrating a version-1 card writes the current version."""
    import json

    from skinscan.models.bundle import CARD_VERSION, Calibration, record_calibration

    bundle = make_bundle(tmp_path / "b", size=32)
    path = bundle / "model_card.json"
    card = json.loads(path.read_text())
    path.write_text(json.dumps(card | {"card_version": CARD_VERSION + 1}))
    with pytest.raises(BundleError, match=f"card version {CARD_VERSION + 1} was written by a newer SkinScan"):
        read_card(bundle)
    path.write_text(json.dumps(card | {"card_version": 1}))
    fit = Calibration(
        temperature=1.2, fitted_on="val", n=10, nll_before=1.0, nll_after=0.9, ece_before=0.1, ece_after=0.05
    )
    assert record_calibration(bundle, fit, {}).card_version == CARD_VERSION == read_card(bundle).card_version
