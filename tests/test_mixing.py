"""Batch mixing (Mixup / CutMix): the soft targets weigh each class by what the mixed image holds of it."""

import numpy as np
import pytest
import torch

from skinscan.config import TrainConfig
from skinscan.training.loop import make_mixer

N_CLASSES = 4


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i; labels such that image i and its mixing partner n-1-i never share a class."""
    x = torch.arange(float(n)).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    y = torch.arange(n) % N_CLASSES
    return x, y


def _mixer(**augment):
    return make_mixer(TrainConfig.model_validate({"augment": augment}), N_CLASSES)


def test_mixing_is_off_by_default():
    assert _mixer() is None
    assert _mixer(mixup_alpha=0.2, mix_prob=0.0) is None


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_target_weighs_the_pasted_area(seed):
    np.random.seed(seed)
    x, y = _batch()
    mixed, target = _mixer(cutmix_alpha=1.0)(x.clone(), y)
    n = len(x)
    for i in range(n):
        partner = n - 1 - i
        pasted = float((mixed[i, 0] == partner).float().mean())
        assert float((mixed[i, 0] == i).float().mean()) == pytest.approx(1 - pasted)
        assert target[i, y[partner]] == pytest.approx(pasted, abs=1e-6)
        assert target[i, y[i]] == pytest.approx(1 - pasted, abs=1e-6)
        assert target[i].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_target_weighs_the_blend(seed):
    np.random.seed(seed)
    x, y = _batch()
    mixed, target = _mixer(mixup_alpha=0.4)(x.clone(), y)
    lam = (mixed[0, 0, 0, 0] - 7) / (0 - 7)  # image 0 = lam * 0 + (1 - lam) * 7
    assert 0 <= lam <= 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    assert target[0, y[0]] == pytest.approx(float(lam), abs=1e-5)
    assert target[0, y[7]] == pytest.approx(1 - float(lam), abs=1e-5)


def test_label_smoothing_is_folded_into_the_targets_and_odd_batches_pass_unmixed():
    mix = make_mixer(TrainConfig.model_validate({"augment": {"mixup_alpha": 0.2}, "label_smoothing": 0.2}), 4)
    x, y = _batch(3)
    out, target = mix(x.clone(), y)
    torch.testing.assert_close(out, x)
    expected = torch.full((3, 4), 0.05)
    expected[torch.arange(3), y] = 0.85
    torch.testing.assert_close(target, expected)
