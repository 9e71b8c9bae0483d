"""Explanations: Grad-CAM family (pytorch-grad-cam), the forward-only CAM fast path, Swin attention maps,
overlays and a compact storage form."""

from skinscan.explain.cam import cam_from_features, feature_layer, gradcam
from skinscan.explain.encode import decode_map, encode_map

__all__ = ["cam_from_features", "decode_map", "encode_map", "feature_layer", "gradcam"]
