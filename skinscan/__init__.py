"""SkinScan: distributed screening of dermoscopy images on Ray."""

__version__ = "0.1.0"
