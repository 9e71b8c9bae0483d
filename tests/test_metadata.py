"""Metadata fusion: one encoding, an image-only prediction whenever metadata is absent (torch, ONNX, screening),
training with metadata withheld, and manifests carrying age, sex and site into screening."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from skinscan.data.metadata import METADATA_DIM, SITES, encode_frame, encode_row, known

TINY = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}


def test_one_encoding_for_every_source():
    ham = encode_row(55, "male", "back")
    isic = encode_row("55", "MALE", "posterior torso")  # ISIC writes ages as text and sites by group
    assert np.array_equal(ham, isic) and ham[0] == pytest.approx(0.55) and ham[1] == 1
    assert ham[2 + 2 + SITES.index("torso")] == 1
    unknown = encode_frame(pd.DataFrame({"age": [np.nan, "unknown"], "sex": ["unknown", None], "site": [None, "?"]}))
    assert not unknown.any() and not known(unknown).any()
    assert encode_frame(pd.DataFrame({"uri": ["a", "b"]})).shape == (2, METADATA_DIM)  # no columns: all unknown
    partial = encode_frame(pd.DataFrame({"age": [40.0], "site": [None]}))
    assert known(partial).all() and partial[0, 2:].sum() == 0


def _fused_bundle(tmp_path):
    from skinscan.config import ModelConfig
    from skinscan.models import create_model
    from skinscan.models.bundle import save_bundle

    torch.manual_seed(0)
    model = create_model(
        ModelConfig(name="swin_tiny_patch4_window7_224", img_size=32, kwargs=TINY, metadata=True), num_classes=4
    )
    torch.nn.init.normal_(model.fuse.weight, std=0.5)  # a trained fusion head: metadata changes the logits
    card = {
        "task": "classify",
        "architecture": {"name": "swin_tiny_patch4_window7_224", "kwargs": TINY},
        "input_size": 32,
        "class_names": ["MEL", "NV", "BCC", "BKL"],
        "inputs": ["image", "age", "sex", "site"],
    }
    return save_bundle(tmp_path / "fused", model.eval(), card), model.eval()


def test_without_metadata_a_fused_model_gives_its_image_only_prediction(tmp_path):
    from conversion.onnx_export import export_onnx
    from skinscan.runtime import create_predictor

    bundle, model = _fused_bundle(tmp_path)
    x = torch.randn(6, 3, 32, 32)
    meta = torch.from_numpy(encode_frame(pd.DataFrame({"age": [70, 30, None, 50, None, 20], "sex": ["male"] * 6})))
    meta[4:] = 0  # two rows without metadata
    with torch.no_grad():
        image_only = model.model(x)  # the timm classifier alone
        assert torch.equal(model(x), image_only) and torch.equal(model(x, torch.zeros_like(meta)), image_only)
        fused = model(x, meta)
    assert torch.equal(fused[4:], image_only[4:]) and (fused[:4] - image_only[:4]).abs().min() > 1e-3

    path = export_onnx(bundle)
    import onnx

    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input", "metadata"]
    assert json.loads((bundle / "model_card.json").read_text())["inputs"] == ["image", "age", "sex", "site"]
    for backend in ("torch", "onnxruntime"):
        p = create_predictor(bundle, backend, with_features=False, device="cpu")
        np.testing.assert_allclose(p.predict(x.numpy()).logits, image_only.numpy(), atol=1e-4)  # no metadata given
        np.testing.assert_allclose(p.predict(x.numpy(), meta.numpy()).logits, fused.numpy(), atol=1e-4)
    from conversion.parity import check_parity

    assert check_parity(bundle, x.numpy(), record=False)["passed"]  # `skinscan convert` checks the fused path


def test_withheld_metadata_is_zeroed_at_the_configured_rate():
    from skinscan.training.steps import withhold

    meta = torch.ones(20000, METADATA_DIM)
    out = withhold(meta, 0.3, torch.Generator().manual_seed(0))
    rows = out.abs().sum(1) > 0
    assert abs(1 - rows.float().mean().item() - 0.3) < 0.02
    assert torch.equal(out[rows], meta[rows])  # kept rows untouched, withheld rows all zeros


def test_metadata_needs_a_classifier_without_mixing():
    from pydantic import ValidationError

    from skinscan.config import TrainConfig

    with pytest.raises(ValidationError, match="model.metadata"):
        TrainConfig.model_validate({"model": {"metadata": True}, "augment": {"mixup_alpha": 0.2}})


def test_manifest_metadata_reaches_the_screening_classifier(tmp_path):
    """A manifest's age/sex/site columns travel through the listing and decode to the classifier; rows without them
    (and every row of a folder input) get the image-only prediction, and the row says which it got."""
    from skinscan.data.listing import list_all
    from skinscan.data.synth import render
    from skinscan.screening.stages import ClassifyStage, decode_batch

    bundle, _ = _fused_bundle(tmp_path)
    from conversion.onnx_export import ensure_onnx

    ensure_onnx(bundle)
    (tmp_path / "img").mkdir()
    uris = []
    for i, c in enumerate(["MEL", "NV", "BCC", "BKL"]):
        from PIL import Image

        p = tmp_path / "img" / f"im{i}.jpg"
        Image.fromarray(render(c, 48, np.random.default_rng(i))[0]).save(p)
        uris.append(str(p))
    manifest = tmp_path / "m.csv"
    rows = {"image_id": [f"im{i}" for i in range(4)], "uri": uris, "age": [70, "", 40, 55]}
    pd.DataFrame({**rows, "site": ["back", "", "", "face"]}).to_csv(manifest, index=False)
    stage = ClassifyStage(str(bundle), "onnxruntime", device="cpu", threads=1, explain="none", thumbnails="none")

    def screen(source):
        table = list_all(str(source))
        batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        return pd.DataFrame(stage(decode_batch(batch, 48, 0, 10**8))).set_index("image_id")

    with_meta, folder = screen(manifest), screen(tmp_path / "img")
    assert with_meta["metadata_used"].tolist() == [True, False, True, True]
    assert not folder["metadata_used"].any() and "age" not in with_meta
    diff = (with_meta["prob_MEL"] - folder["prob_MEL"]).abs()
    assert diff["im1"] < 1e-6 and (diff.drop("im1") > 1e-4).all()  # image-only exactly where metadata is absent


@pytest.mark.slow
def test_a_metadata_model_trains_and_evaluates_with_its_metadata(ray_local, tmp_path):
    """Two workers train a tiny fused Swin on synthetic data whose metadata depends on the class: the card names
    its inputs, the fusion head learned something, and evaluation reads the manifest's metadata."""
    from pathlib import Path

    from skinscan.config import SynthConfig, TrainConfig, load_config
    from skinscan.data.synth import generate
    from skinscan.evaluation.classifier import predict_frame
    from skinscan.models.bundle import load_bundle
    from skinscan.training import run

    data = tmp_path / "synth.zip"
    generate(SynthConfig(output=str(data), n_images=200, size=48, seed=3, metadata=True), progress=False)
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        TrainConfig,
        root / "configs/train/tiny.yaml",
        [
            f"data.source={data}",
            f"storage_path={tmp_path / 'ray'}",
            f"output={tmp_path / 'b'}",
            "epochs=3",
            "model.img_size=48",
            "model.metadata=true",
            "calibrate=false",
        ],  # fmt: skip
    )
    bundle = run(cfg)
    model, card = load_bundle(bundle)
    assert card.inputs == ["image", "age", "sex", "site"] and model.fuse.weight.abs().sum() > 0
    df = pd.read_parquet(bundle / "train_manifest.parquet").query("split == 'val'")
    assert df["age"].notna().all() and df["site"].notna().any()
    _, fused, _ = predict_frame(bundle, df, "torch", progress=False)
    _, image_only, _ = predict_frame(bundle, df.drop(columns=["age", "sex", "site"]), "torch", progress=False)
    assert not np.allclose(fused, image_only)


def test_decoded_blocks_with_and_without_metadata_concatenate(tmp_path):
    """The listing types its metadata columns, so a decoded block whose metadata is all unknown still concatenates
    with one that has metadata on the way to the classifier (a float column beside a text one fails a run)."""
    import pyarrow as pa
    from PIL import Image
    from ray.data._internal.arrow_ops.transform_pyarrow import concat
    from ray.data.block import BlockAccessor

    from skinscan.data.listing import LISTING_SCHEMA
    from skinscan.screening.stages import decode_batch

    Image.new("RGB", (40, 40), (180, 120, 90)).save(tmp_path / "a.jpg")
    uri = str(tmp_path / "a.jpg")
    blocks = []
    for sex, age in (([None, None], [None, None]), (["male", None], [40.0, None])):
        listing = pa.table(
            {"image_id": ["a", "b"], "uri": [uri, uri], "key": [1, 2], "age": age, "sex": sex, "site": [None, None]},
            schema=LISTING_SCHEMA,
        )
        batch = BlockAccessor.for_block(listing).to_batch_format("numpy")
        blocks.append(BlockAccessor.batch_to_block(decode_batch(batch, 32, 0, 10**8)))
    table = concat(blocks)
    assert table.column("sex").to_pylist() == [None, None, "male", None]
    assert table.column("age").to_pylist()[2] == 40.0
