"""Models: the one factory (timm classifiers by name, `unet` for the segmenter), the U-Net, the heads that
explanations and training read, and the model bundle with its typed card. Imports `config`, `data`, `errors`."""

from skinscan.models.factory import SEGMENTER_NAMES, create_classifier, create_model
from skinscan.models.heads import (
    LogitsAndFeatures,
    LogitsAndMask,
    features_nchw,
    head_weights,
    is_swin,
    shipped_state,
)
from skinscan.models.unet import UNet

__all__ = [
    "SEGMENTER_NAMES",
    "LogitsAndFeatures",
    "LogitsAndMask",
    "UNet",
    "create_classifier",
    "create_model",
    "features_nchw",
    "head_weights",
    "is_swin",
    "shipped_state",
]
