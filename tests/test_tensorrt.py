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
