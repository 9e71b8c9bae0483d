"""Explanations: fast path equals pytorch-grad-cam, Swin reshape at any size, attention maps, hooks released."""

import numpy as np
import pytest
import torch

from skinscan.evaluation.localization import energy_in_mask
from skinscan.explain import cam_from_features, decode_map, encode_map, gradcam
from skinscan.explain.attention import attention_maps
from skinscan.explain.overlay import overlay
from skinscan.models import LogitsAndFeatures, head_weights
from skinscan.models.bundle import load_bundle

TOL = 1e-4


def _fast(model, x, classes, size):
    with torch.no_grad():
        _, f = LogitsAndFeatures(model)(x)
    return cam_from_features(f.numpy(), head_weights(model)[0].numpy(), np.asarray(classes), size)


@pytest.mark.parametrize("kind", ["swin", "efficientnet"])
def test_fast_path_equals_pytorch_grad_cam(kind, tiny_bundles):
    model, card = load_bundle(tiny_bundles[kind])
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    classes = [0, 2, 3]
    ref = gradcam(model, x, classes)
    fast = _fast(model, x, classes, (64, 64))
    assert ref.shape == fast.shape == (3, 64, 64)
    assert np.abs(ref - fast).max() <= TOL


def test_fast_path_from_onnx_outputs(tiny_bundles):
    from skinscan.runtime import create_predictor

    model, card = load_bundle(tiny_bundles["swin"])
    x = torch.randn(2, 3, 64, 64)
    pred = create_predictor(tiny_bundles["swin"], "onnxruntime").predict(x.numpy())
    cls = pred.logits.argmax(1)
    fast = cam_from_features(pred.features, head_weights(model)[0].numpy(), cls, (64, 64))
    assert np.abs(fast - gradcam(model, x, cls.tolist())).max() <= 1e-3


def test_swin_gradcam_at_non_224_sizes():
    from skinscan.config import ModelConfig
    from skinscan.models import create_model

    model = create_model(
        ModelConfig(
            name="swin_tiny_patch4_window7_224",
            img_size=96,
            kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 3},
        ),
        num_classes=3,
    ).eval()
    maps = gradcam(model, torch.randn(2, 3, 96, 96), None, "gradcam++")
    assert maps.shape == (2, 96, 96) and np.isfinite(maps).all()


def test_attention_maps_shape_and_hooks_removed(tiny_bundles):
    model, _ = load_bundle(tiny_bundles["swin"])
    maps = attention_maps(model, torch.randn(2, 3, 64, 64), (64, 64))
    assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1 + 1e-6
    low = attention_maps(model, torch.randn(1, 3, 64, 64))
    assert low.shape == (1, 8, 8)
    for block in model.layers[-1].blocks:
        assert not block._forward_pre_hooks and not block.attn.softmax._forward_hooks


def test_gradcam_memory_flat_over_200_batches(tiny_bundles):
    import gc
    import resource

    model, _ = load_bundle(tiny_bundles["swin"])
    x = torch.randn(4, 3, 64, 64)

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    for _ in range(20):  # warm-up: allocator pools, lazy imports
        gradcam(model, x)
    gc.collect()
    start = rss_mb()
    for _ in range(200):
        gradcam(model, x)
    gc.collect()
    grown = rss_mb() - start
    assert grown < 30, f"RSS grew {grown:.1f} MB over 200 batches"
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_map_encoding_round_trip_is_compact():
    m = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    data = encode_map(m)
    assert len(data) < 200
    assert np.abs(decode_map(data) - m).max() <= 0.5 / 255 + 1e-6
    assert decode_map(data, (224, 224)).shape == (224, 224)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    assert (decode_map(encode_map(mask)) > 0.5).sum() == 16


def test_overlay_draws_heat_and_contour():
    img = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    out = overlay(img, heat, mask)
    assert out.shape == img.shape and (out[8, 8:24] == [0, 255, 0]).all() and not (out == img).all()


def test_energy_in_mask():
    maps = np.zeros((1, 4, 4))
    maps[0, :2, :2] = 1
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :] = True
    assert energy_in_mask(maps, mask)[0] == 1.0
