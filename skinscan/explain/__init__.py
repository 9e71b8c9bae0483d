"""Explanations: one registry of methods (`registry.explain`), the Grad-CAM family (pytorch-grad-cam), the
forward-only CAM fast path, Swin attention maps, overlays and a compact storage form."""

from skinscan.explain.cam import cam_from_features, feature_layer, gradcam
from skinscan.explain.encode import decode_map, encode_map
from skinscan.explain.registry import METHODS, explain, get_method

__all__ = [
    "METHODS",
    "cam_from_features",
    "decode_map",
    "encode_map",
    "explain",
    "feature_layer",
    "get_method",
    "gradcam",
]
