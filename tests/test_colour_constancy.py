"""Shades of Gray colour constancy: one function, applied identically by training, evaluation and screening."""

import io

import numpy as np
import pytest
from PIL import Image

from skinscan.data.preprocess import IMAGENET, Normalization, load_image, normalize_batch, shades_of_gray


def test_a_colour_cast_is_removed_and_grey_stays_grey():
    rng = np.random.default_rng(0)
    scene = rng.integers(40, 200, (32, 32, 3)).astype(np.float64)
    cast = np.clip(scene * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)  # a warm camera
    a, b = shades_of_gray(scene.astype(np.uint8)), shades_of_gray(cast)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4  # the same scene under two lights looks the same
    grey = np.full((8, 8, 3), 128, np.uint8)
    assert (shades_of_gray(grey) == grey).all()


def test_the_same_bytes_give_the_same_tensor_in_training_evaluation_and_screening(tmp_path):
    from skinscan.data.dataset import ImageDataset
    from skinscan.screening.stages import decode_batch

    norm = Normalization(mean=IMAGENET.mean, std=IMAGENET.std, colour_constancy_p=6)
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(120, 40, (150, 200, 3)) * [1.2, 0.9, 0.8], 0, 255).astype(np.uint8)
    path = tmp_path / "lesion.jpg"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=92)
    path.write_bytes(buf.getvalue())
    size = 64

    training = ImageDataset([str(path)], [0], size, None, cache=False, norm=norm)[0][0].numpy()
    evaluation = normalize_batch(load_image(str(path), size)[None], norm)[0]
    work = decode_batch({"uri": np.array([str(path)], object), "image_id": np.array(["x"], object)}, size, 0, 10**8)
    screening = normalize_batch(work["work"], norm)[0]
    assert np.array_equal(training, evaluation) and np.array_equal(evaluation, screening)
    plain = normalize_batch(load_image(str(path), size)[None], IMAGENET)[0]
    assert not np.allclose(plain, evaluation)  # constancy really was applied (once: see the equality above)


def test_the_card_records_colour_constancy():
    from skinscan.config import TrainConfig
    from skinscan.training.loop import input_normalization

    cfg = TrainConfig(colour_constancy_p=6)
    assert input_normalization(cfg).colour_constancy_p == 6
    assert input_normalization(TrainConfig()).colour_constancy_p is None
    with pytest.raises(ValueError):
        TrainConfig(colour_constancy_p=0.5)


def test_channel_gain_changes_white_balance_and_leaves_masks_alone():
    import torch
    from torchvision import tv_tensors

    from skinscan.config import AugmentConfig
    from skinscan.data.transforms import RandomChannelGain, train_transform

    torch.manual_seed(0)
    img = tv_tensors.Image(torch.full((3, 8, 8), 100, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(1, 8, 8))
    out, m = RandomChannelGain(0.3)(img, mask)
    per_channel = out.float().mean((1, 2))
    assert ((per_channel >= 70) & (per_channel <= 130)).all() and per_channel.unique().numel() == 3
    assert torch.equal(m, mask)
    names = [type(t).__name__ for t in train_transform(64, AugmentConfig(channel_gain=0.2, hue=0.1)).transforms]
    assert "RandomChannelGain" in names and "ColorJitter" in names


def test_training_applies_constancy_to_the_whole_image_before_augmentation(tmp_path):
    """The illuminant is estimated from the whole decoded image, as at inference, not from a random crop after
    colour jitter: an augmentation's colour change reaches the model instead of being undone."""
    import torch

    from skinscan.data.dataset import ImageDataset
    from skinscan.data.preprocess import colour_constant

    norm = Normalization(mean=IMAGENET.mean, std=IMAGENET.std, colour_constancy_p=6)
    rng = np.random.default_rng(2)
    img = np.clip(rng.normal(120, 40, (64, 64, 3)) * [1.3, 1.0, 0.7], 0, 255).astype(np.uint8)
    path = tmp_path / "lesion.png"
    Image.fromarray(img).save(path)
    seen = []

    def warm_cast(x):  # an augmentation that changes white balance: it must survive to the model's input
        seen.append(x.as_subclass(torch.Tensor).permute(1, 2, 0).numpy().copy())
        return (x.float() * torch.tensor([1.0, 1.0, 0.5])[:, None, None]).to(torch.uint8)

    x = ImageDataset([str(path)], [0], 64, warm_cast, cache=False, norm=norm)[0][0].numpy()
    assert np.array_equal(seen[0], colour_constant(load_image(str(path), 64), norm))  # constancy came first
    blue = x[2] * IMAGENET.std[2] + IMAGENET.mean[2]
    assert abs(blue.mean() * 255 - seen[0][..., 2].mean() * 0.5) < 1  # and was not applied again after the cast
