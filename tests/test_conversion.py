"""ONNX export parity (Swin, EfficientNet, U-Net), runtime backends agree, TensorRT gated with its reason."""

import numpy as np
import pytest

from conversion.onnx_export import export_onnx
from conversion.parity import ParityError, check_parity, parity_batch
from skinscan.models.bundle import read_card
from skinscan.runtime import create_predictor

FP32_TOL = 1e-4  # max |logit difference| allowed between PyTorch and ONNX Runtime in float32
FP16_TOL = 5e-2


@pytest.mark.parametrize("kind", ["swin", "efficientnet", "unet"])
def test_onnx_parity(kind, tiny_bundles):
    bundle = tiny_bundles[kind]  # exported by the fixture through export_onnx, as `skinscan convert` does
    path = bundle / "model.onnx"
    card = read_card(bundle)
    assert card.exports["onnx"].opset >= 17 and path.exists()
    stats = check_parity(bundle, parity_batch(card, None, n=5), max_abs_diff=FP32_TOL)  # odd batch: dynamic
    assert stats["passed"] and stats["max_abs_diff"] <= FP32_TOL
    assert stats.get("top1_agreement", stats.get("mask_agreement")) >= (1.0 if kind != "unet" else 0.999)
    assert "onnxruntime" in read_card(bundle).parity


def test_backends_agree_on_logits_and_features(tiny_bundles):
    bundle = tiny_bundles["swin"]
    x = parity_batch(read_card(bundle), None, n=3)
    t = create_predictor(bundle, "torch").predict(x)
    o = create_predictor(bundle, "onnxruntime", threads=1).predict(x)
    assert t.features is not None and t.features.shape == o.features.shape
    assert t.features.shape[1] == 64  # NCHW: Swin's NHWC map was permuted
    np.testing.assert_allclose(t.logits, o.logits, atol=FP32_TOL)
    np.testing.assert_allclose(t.features, o.features, atol=1e-3)


def test_fp16_graph_parity(tiny_bundles):
    bundle = tiny_bundles["efficientnet"]
    export_onnx(bundle, fp16=True)
    stats = check_parity(
        bundle, parity_batch(read_card(bundle), None, n=4), fp16=True, max_abs_diff=FP16_TOL, min_agreement=0.75
    )
    assert read_card(bundle).exports["onnx_fp16"].dtype == "float16"
    assert stats["max_abs_diff"] <= FP16_TOL


def test_parity_failure_is_reported(tiny_bundles):
    bundle = tiny_bundles["swin"]
    export_onnx(bundle, fp16=True)
    with pytest.raises(ParityError, match="parity failed"):
        check_parity(
            bundle,
            parity_batch(read_card(bundle), None, n=2),
            max_abs_diff=0.0,
            record=False,
            backend="onnxruntime",
            fp16=True,
        )


def test_runtime_never_exports_and_names_the_command(tmp_path):
    from conftest import make_bundle

    from skinscan.errors import BundleError

    bundle = make_bundle(tmp_path / "b", "resnet18", {}, size=32)
    with pytest.raises(BundleError, match=r"no onnx export; make it with `skinscan convert --model .* --to onnx`"):
        create_predictor(bundle, "onnxruntime")
    assert not list(bundle.glob("*.onnx")) and not read_card(bundle).exports
    path = export_onnx(bundle)
    path.write_bytes(path.read_bytes() + b"\0")  # a changed file is refused, not loaded
    with pytest.raises(BundleError, match="does not match the sha256"):
        create_predictor(bundle, "onnxruntime")


def test_tensorrt_backend_gated_with_reason(tiny_bundles):
    from skinscan.errors import MissingDependency
    from skinscan.runtime.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except MissingDependency as err:
        with pytest.raises(MissingDependency):
            create_predictor(tiny_bundles["swin"], "tensorrt")
        pytest.skip(f"TensorRT path not testable here: {err}")
    # with TensorRT and CUDA: build, run and compare against PyTorch
    from conversion.convert import run
    from skinscan.config import ConvertConfig

    stats = run(ConvertConfig(model=str(tiny_bundles["swin"]), to="tensorrt"))
    assert stats["tensorrt_parity"]["passed"]


def test_convert_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "skinscan.cli", "convert", "--model", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "not a model bundle" in out.stderr and "Traceback" not in out.stderr


def test_screening_in_bf16_on_the_torch_backend_agrees_with_fp32(tiny_bundles, synth_zip):
    """`precision: bf16` (torch backend, CPU): the classify stage runs the model in bfloat16, with probabilities
    within bf16's resolution of the fp32 ones."""
    from skinscan.data.listing import list_all
    from skinscan.screening.stages import ClassifyStage, decode_batch

    uris = list_all(f"zip://images::{synth_zip}").column("uri").to_pylist()[:24]
    batch = decode_batch({"uri": np.array(uris, object), "image_id": np.array(uris, object)}, 64, 0, 10**8)
    probs = {}
    for precision in ("fp32", "bf16"):
        stage = ClassifyStage(
            str(tiny_bundles["swin"]), backend="torch", explain="none", threads=1, thumbnails="none",
            precision=precision,
        )  # fmt: skip
        assert str(stage.predictor.dtype) == {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[precision]
        out = stage(dict(batch))
        probs[precision] = np.stack([out[f"prob_{c}"] for c in ("MEL", "NV", "BCC", "BKL")], 1)
    assert np.abs(probs["bf16"] - probs["fp32"]).max() < 0.03
    assert (probs["bf16"].argmax(1) == probs["fp32"].argmax(1)).mean() >= 0.9


def test_onnxruntime_asked_for_cuda_without_its_provider_is_one_line(tiny_bundles, monkeypatch):
    """On a GPU node with the CPU-only onnxruntime wheel, device cuda would silently run on the CPU: refused."""
    import onnxruntime as ort

    from skinscan.errors import ConfigError
    from skinscan.runtime import create_predictor

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="runs on CPUExecutionProvider, not CUDA .* install onnxruntime-gpu"):
        create_predictor(str(tiny_bundles["swin"]), "onnxruntime", device="cuda")


def test_a_batch_in_micro_batches_gives_what_one_forward_gives():
    """`runtime.staging`: the GPU predictors' micro-batches (copies overlapping compute on a GPU) are put back in
    order, every output whole, each input in its own dtype (the streams and pinned buffers: device_check)."""
    import torch

    from skinscan.runtime.staging import Staging

    rng = np.random.default_rng(0)
    x, meta = rng.normal(size=(10, 3, 4, 4)).astype(np.float32), rng.normal(size=(10, 2)).astype(np.float32)
    seen = []

    def fn(a, m):
        seen.append((len(a), a.dtype, m.dtype))
        return a.float().sum((2, 3)) + m.float().sum(1, keepdim=True), a.float()

    one = fn(torch.from_numpy(x), torch.from_numpy(meta))
    seen.clear()
    logits, features = Staging(torch.device("cpu"), micro_batch=4).run(fn, [x, meta], [torch.bfloat16, None])
    assert [s[0] for s in seen] == [4, 4, 2] and {s[1:] for s in seen} == {(torch.bfloat16, torch.float32)}
    assert features.shape == x.shape and logits.dtype == np.float32
    assert np.allclose(logits, one[0].numpy(), atol=0.2) and np.allclose(features, x, atol=0.05)  # bf16 inputs


def test_convert_reads_and_writes_an_object_store_bundle(s3_server, tmp_path, monkeypatch):
    """`skinscan convert --model s3://...` (what a convert job on a GPU worker runs): converted in a local copy, the
    new files and the card go back beside the bundle, and a record another conversion added meanwhile stays."""
    import json

    from conftest import make_bundle, use_s3

    from conversion.convert import run
    from skinscan.config import ConvertConfig
    from skinscan.data import storage
    from skinscan.models.bundle import file_sha256, publish_bundle

    endpoint, _ = s3_server
    use_s3(monkeypatch, endpoint)
    uri = f"s3://skinscan-test/bundles/convert-{tmp_path.name}"
    publish_bundle(make_bundle(tmp_path / "b"), uri)
    from conversion import convert as convert_module

    real = convert_module.convert

    def another_worker_finishes_meanwhile(cfg, bundle):
        card = json.loads(storage.read_bytes(f"{uri}/model_card.json"))
        card["exports"]["tensorrt_fp16"] = {"file": "model.fp16.engine", "sha256": "0" * 64}
        storage.write_bytes(f"{uri}/model_card.json", json.dumps(card).encode())
        return real(cfg, bundle)

    monkeypatch.setattr(convert_module, "convert", another_worker_finishes_meanwhile)
    stats = run(ConvertConfig(model=uri))
    assert stats["onnx"] == f"{uri}/model.onnx" and stats["onnx_parity"]["top1_agreement"] == 1.0
    after = read_card(uri)
    assert set(after.exports) == {"onnx", "tensorrt_fp16"}
    (tmp_path / "back.onnx").write_bytes(storage.read_bytes(f"{uri}/model.onnx"))
    assert file_sha256(tmp_path / "back.onnx") == after.exports["onnx"].sha256
