"""The auxiliary lesion-mask loss (`lesion_mask_weight`): a training-only head, masks aligned with augmentation."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms import v2

from skinscan.config import ModelConfig, SynthConfig, TrainConfig
from skinscan.data.dataset import ImageDataset
from skinscan.data.imageio import read_image, resize_square
from skinscan.data.masks import read_mask
from skinscan.errors import DataError
from skinscan.models import LogitsAndMask, create_model, shipped_state
from skinscan.training.driver import prepare_data

TINY_SWIN = ModelConfig(
    name="swin_tiny_patch4_window7_224",
    img_size=64,
    kwargs={"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4},
)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from skinscan.data.synth import generate

    out = tmp_path_factory.mktemp("masksynth") / "synth"
    generate(SynthConfig(output=str(out), n_images=24, size=64, seed=3), progress=False)
    return out


@pytest.mark.parametrize("model_cfg", [TINY_SWIN, ModelConfig(name="resnet18", img_size=64)], ids=["swin", "cnn"])
def test_mask_head_is_not_shipped(model_cfg):
    torch.manual_seed(0)
    wrapped = LogitsAndMask(create_model(model_cfg, num_classes=4)).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, mask_logits = wrapped(x)
    assert logits.shape == (2, 4) and mask_logits.shape[:2] == (2, 1) and mask_logits.shape[-1] > 1
    plain = create_model(model_cfg, num_classes=4).eval()
    plain.load_state_dict(shipped_state(wrapped.state_dict()))  # strict: no head keys, nothing missing
    torch.testing.assert_close(plain(x), logits)
    assert shipped_state(plain.state_dict()).keys() == plain.state_dict().keys()


def test_config_keeps_the_mask_loss_to_plain_classification():
    with pytest.raises(ValidationError, match="lesion_mask_weight"):
        TrainConfig.model_validate({"task": "segment", "lesion_mask_weight": 1.0})
    with pytest.raises(ValidationError, match="lesion_mask_weight"):
        TrainConfig.model_validate({"lesion_mask_weight": 1.0, "augment": {"mixup_alpha": 0.2}})


def test_masks_follow_the_image_through_augmentation(synth_dir):
    df, classes = prepare_data(
        TrainConfig.model_validate({"data": {"source": str(synth_dir)}, "lesion_mask_weight": 1})
    )
    assert df["mask_uri"].notna().all() and classes
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomVerticalFlip(p=1.0)])
    labels = [classes.index(c) for c in df["label"]]
    ds = ImageDataset(df["uri"], labels, 64, flip, mask_uris=df["mask_uri"], cache=False)
    for i in (0, 5):
        x, label, mask = ds[i]
        assert label == labels[i] and x.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
        expected = read_mask(df["mask_uri"][i], 64)[::-1, ::-1]
        np.testing.assert_array_equal(mask[0].numpy(), expected)
        image = resize_square(read_image(df["uri"][i], draft_size=64), 64)[::-1, ::-1]
        lesion = expected.astype(bool)
        inside, outside = x[:, torch.from_numpy(lesion)], x[:, torch.from_numpy(~lesion)]
        assert inside.mean() < outside.mean()  # the flipped mask still covers the (darker) lesion
        assert image[lesion].mean() < image[~lesion].mean()


def test_images_without_a_mask_add_nothing_to_the_mask_loss(synth_dir, tmp_path):
    """A source without masks (ISIC 2017) trains beside one with masks: its images get an all-unknown mask, which
    the auxiliary loss skips; a data set with no mask at all is still a clear error."""
    import shutil

    from skinscan.training.steps import UNKNOWN_MASK, lesion_mask_loss

    copy = tmp_path / "synth"
    shutil.copytree(synth_dir, copy)
    missing = next((copy / "masks").iterdir())
    missing.unlink()
    cfg = TrainConfig.model_validate({"data": {"source": str(copy)}, "lesion_mask_weight": 1})
    df, classes = prepare_data(cfg)
    assert len(df) == 24 and df["mask_uri"].isna().sum() == 1
    i = int(np.flatnonzero(df["mask_uri"].isna())[0])
    ds = ImageDataset(df["uri"], [0] * 24, 64, None, mask_uris=df["mask_uri"], cache=False)
    assert (ds[i][2] == UNKNOWN_MASK).all()
    logits = torch.randn(3, 1, 4, 4)
    known = torch.randint(0, 2, (3, 1, 16, 16)).float()
    mixed = known.clone()
    mixed[2] = UNKNOWN_MASK
    assert torch.isclose(lesion_mask_loss(logits, mixed), lesion_mask_loss(logits[:2], known[:2]))
    assert lesion_mask_loss(logits, torch.full_like(known, UNKNOWN_MASK)) == 0
    shutil.rmtree(copy / "masks")
    with pytest.raises(DataError, match="no masks found"):
        prepare_data(cfg)
