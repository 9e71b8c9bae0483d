"""TensorRT: the version rule, the strongly typed build, the profile batch, and (where TensorRT and CUDA exist)
parity with ONNX Runtime on real images and back-to-back batches of changing size."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from skinscan.config import ConvertConfig
from skinscan.errors import MissingDependency

ROOT = Path(__file__).resolve().parents[1]
FP16_TOL = 5e-2


def test_tensorrt_older_than_10_is_refused_naming_the_version():
    from skinscan.runtime.tensorrt import check_version

    with pytest.raises(MissingDependency, match=r"TensorRT 8\.6\.1 found; SkinScan needs TensorRT >= 10"):
        check_version("8.6.1")
    check_version("10.3.0")
    check_version("11.0.0")


def test_networks_are_built_strongly_typed_on_tensorrt_10_and_11():
    from conversion.tensorrt_build import strongly_typed_flags

    trt10 = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1))
    assert strongly_typed_flags(trt10) == 1 << 1
    assert strongly_typed_flags(types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace())) == 0


def test_profile_opt_batch_comes_from_the_screen_config():
    from conversion.convert import profile_batches

    cfg = ConvertConfig(model="m", to="tensorrt", screen_config=str(ROOT / "configs/screen/gpu_cluster.yaml"))
    assert profile_batches(cfg, "classify") == (256, 256)
    assert profile_batches(cfg, "segment") == (128, 256)
    assert profile_batches(ConvertConfig(model="m", opt_batch=64), "classify") == (64, 256)


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory):
    """A tiny Swin with FP32 and FP16 engines (skipped with the reason where TensorRT or CUDA is missing)."""
    from skinscan.runtime.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except MissingDependency as err:
        pytest.skip(f"TensorRT path not testable here: {err}")
    from conftest import make_bundle

    from conversion.convert import run

    bundle = make_bundle(tmp_path_factory.mktemp("trt") / "swin", size=64)
    run(ConvertConfig(model=str(bundle), to="tensorrt", opt_batch=16, max_batch=64))
    run(ConvertConfig(model=str(bundle), to="tensorrt", fp16=True, opt_batch=16, max_batch=64, min_agreement=0.9))
    return bundle


def test_tensorrt_fp16_matches_onnxruntime_on_real_images(engine_bundle, isic_archive_dir):
    from skinscan.data.preprocess import load_batch
    from skinscan.runtime import create_predictor

    uris = [str(p) for p in sorted((isic_archive_dir / "images").glob("*.jpg"))[:32]]
    x = load_batch(uris, 64)
    ort = create_predictor(engine_bundle, "onnxruntime", device="cpu").predict(x)
    trt = create_predictor(engine_bundle, "tensorrt", fp16=True).predict(x)
    assert np.abs(ort.logits - trt.logits).max() <= FP16_TOL
    assert np.abs(ort.features - trt.features).max() <= 10 * FP16_TOL
    assert (ort.logits.argmax(1) == trt.logits.argmax(1)).mean() >= 0.9


def test_tensorrt_back_to_back_batches_equal_one_at_a_time(engine_bundle):
    from skinscan.runtime import create_predictor

    pred = create_predictor(engine_bundle, "tensorrt")
    rng = np.random.default_rng(0)
    sizes = [1, 7, 64, 3, 32, 16, 5, 2, 48, 9] * 10  # 100 batches, the engine's shape changing every call
    batches = [rng.standard_normal((b, 3, 64, 64)).astype(np.float32) for b in sizes]
    together = [pred.predict(x).logits for x in batches]
    for x, got in zip(batches, together):
        single = np.concatenate([pred.predict(x[i : i + 1]).logits for i in range(len(x))])
        np.testing.assert_allclose(got, single, atol=1e-4)


def test_a_tensorrt_backend_asked_for_fp16_loads_the_fp16_engine(tmp_path, monkeypatch):
    """`precision: fp16` (gpu_cluster.yaml) looks up the `tensorrt_fp16` export, and a missing one is one line
    naming the command that builds it (a fake runner stands in for TensorRT, which is not installed here)."""
    from conftest import make_bundle

    from skinscan.errors import BundleError, SkinScanError
    from skinscan.models.bundle import ExportRecord, file_sha256, record_export
    from skinscan.runtime import create_predictor
    from skinscan.runtime import tensorrt as trt_runtime

    loaded = []

    class FakeRunner:
        def __init__(self, path):
            loaded.append(Path(path).name)

        def __call__(self, *inputs):
            import torch

            return [torch.zeros(len(inputs[0]), 4)]

    import torch

    monkeypatch.setattr(trt_runtime, "require_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(trt_runtime, "TensorRTRunner", FakeRunner)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    bundle = make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"no tensorrt_fp16 export; make it with `skinscan convert .* --fp16"):
        create_predictor(bundle, "tensorrt", precision="fp16")
    for key, name in (("tensorrt", "model.engine"), ("tensorrt_fp16", "model.fp16.engine")):
        (bundle / name).write_bytes(name.encode())
        record_export(bundle, key, ExportRecord(file=name, sha256=file_sha256(bundle / name)))
    create_predictor(bundle, "tensorrt", with_features=False, precision="fp16").predict(np.zeros((2, 3, 64, 64)))
    create_predictor(bundle, "tensorrt", with_features=False)
    assert loaded == ["model.fp16.engine", "model.engine"]
    # an engine built for another GPU architecture (or TensorRT version) is refused in one line before loading
    record_export(
        bundle,
        "tensorrt",
        ExportRecord(
            file="model.engine",
            sha256=file_sha256(bundle / "model.engine"),
            tensorrt_version="10.3.0",
            gpu="NVIDIA A10G",
            compute_capability="8.6",
        ),
    )
    with pytest.raises(
        SkinScanError, match=r"built with TensorRT 10\.3 for compute capability 8\.6 \(NVIDIA A10G\); this node"
    ):
        create_predictor(bundle, "tensorrt", with_features=False)
    assert loaded == ["model.fp16.engine", "model.engine"]


def test_a_precision_a_backend_cannot_run_is_one_line():
    from pydantic import ValidationError

    from skinscan.config import ScreenConfig
    from skinscan.errors import ConfigError
    from skinscan.runtime import create_predictor

    for backend in ("onnxruntime", "tensorrt"):
        with pytest.raises(ValidationError, match=f"precision bf16: backend {backend} runs fp32 or fp16"):
            ScreenConfig(backend=backend, precision="bf16")
        with pytest.raises(ConfigError, match=f"backend {backend} runs fp32 or fp16 exports, not bf16"):
            create_predictor("unused", backend, precision="bf16")
    ScreenConfig(backend="torch", precision="bf16", compile=True)


def test_engines_are_built_without_tf32_and_big_batches_run_in_profile_sized_pieces(tmp_path, monkeypatch):
    """FP32 engines keep FP32 matmuls (TF32 would miss the 1e-3 parity tolerance on a trained model); a batch above
    the profile's largest is split, not sent to fail as a negative dimension (TensorRT itself is faked here)."""
    from unittest import mock

    from conversion import tensorrt_build
    from skinscan.runtime.tensorrt import check_engine_target, profile_chunks

    trt = mock.MagicMock()
    trt.Builder.return_value.create_network.return_value.num_inputs = 0
    trt.OnnxParser.return_value.parse.return_value = True
    trt.Builder.return_value.build_serialized_network.return_value = b"engine"
    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda: trt)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    tensorrt_build.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
    trt.Builder.return_value.create_builder_config.return_value.clear_flag.assert_called_with(trt.BuilderFlag.TF32)
    assert [(s.start, s.stop) for s in profile_chunks(600, 256)] == [(0, 256), (256, 512), (512, 600)]
    assert [(s.start, s.stop) for s in profile_chunks(3, 256)] == [(0, 3)]
    record = types.SimpleNamespace(file="e", tensorrt_version="10.3.0", gpu="A10G", compute_capability="8.6")
    check_engine_target(record, "10.3.1", "A10G", "8.6", "cmd")  # a patch release runs the same engines
    with pytest.raises(Exception, match="TensorRT 10.3 .* this node has TensorRT 11.0"):
        check_engine_target(record, "11.0.0", "A10G", "8.6", "cmd")
