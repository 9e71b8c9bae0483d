"""Typed errors. The CLI turns any `SkinScanError` into one line on stderr and a non-zero exit."""

from __future__ import annotations


class SkinScanError(Exception):
    """Base class for errors caused by user input (config, data, paths); never shown as a traceback."""


class ConfigError(SkinScanError):
    """A config value is missing or invalid."""


class DataError(SkinScanError):
    """A manifest, CSV or archive is malformed or inconsistent."""


class ImageDecodeError(SkinScanError):
    """An image could not be decoded. `kind` is one of: empty, truncated, not_image, too_large, unsupported."""

    def __init__(self, uri: str, kind: str, detail: str = ""):
        self.uri, self.kind, self.detail = uri, kind, detail
        super().__init__(f"{uri}: {kind}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across Ray workers
        return (ImageDecodeError, (self.uri, self.kind, self.detail))


class BundleError(SkinScanError):
    """A model bundle is missing files, fails its checksum, or does not match what is asked of it."""


class LeakageError(SkinScanError):
    """Evaluation data overlaps the model's training data."""


class MissingDependency(SkinScanError):
    """An optional dependency (e.g. TensorRT) or device (CUDA) is not available."""
