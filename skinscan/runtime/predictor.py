"""Backends: torch (CPU/CUDA, optional torch.compile and half precision), onnxruntime (CPU, CUDA, TensorRT
execution providers when present) and tensorrt (a serialised engine built by `conversion.tensorrt_build`).
Each loads what `conversion/` made, after checking its sha256 against the bundle's card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from skinscan.config import EXPORTED_PRECISIONS, PRECISIONS
from skinscan.errors import ConfigError
from skinscan.models.bundle import ModelCard, checked_file, read_card
from skinscan.runtime.staging import MICRO_BATCH, Staging

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass
class Prediction:
    outputs: list[np.ndarray]

    @property
    def logits(self) -> np.ndarray:
        return self.outputs[0]

    @property
    def features(self) -> np.ndarray | None:
        return self.outputs[1] if len(self.outputs) > 1 else None


class Predictor(Protocol):
    card: ModelCard
    backend: str

    def predict(self, x: np.ndarray, meta: np.ndarray | None = None) -> Prediction: ...


def metadata_input(card: ModelCard, meta: np.ndarray | None, n: int) -> np.ndarray | None:
    """The metadata batch a model reads: None for image-only models; zeros (unknown: the image-only prediction)
    where a metadata model gets none."""
    from skinscan.data.metadata import METADATA_DIM

    if not card.uses_metadata:
        return None
    if meta is None:
        return np.zeros((n, METADATA_DIM), np.float32)
    return np.ascontiguousarray(meta, dtype=np.float32)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class TorchPredictor:
    backend = "torch"

    def __init__(
        self,
        bundle: str | Path,
        with_features: bool = True,
        device: str = "auto",
        precision: str = "fp32",
        compile: bool = False,
        threads: int | None = None,
    ):
        import torch

        from skinscan.models import LogitsAndFeatures
        from skinscan.models.bundle import load_bundle

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(
            "cuda" if device == "auto" and _cuda_available() else ("cpu" if device == "auto" else device)
        )
        model, self.card = load_bundle(bundle, self.device)
        if self.card.task == "classify" and with_features:
            model = LogitsAndFeatures(model).eval()
        # fp16 runs as bf16 on a CPU (no fp16 kernels there); bf16 and fp32 run as asked
        half = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.dtype = {"fp32": torch.float32, "fp16": half, "bf16": torch.bfloat16}[precision]
        model = model.to(self.dtype)
        self.model = torch.compile(model) if compile else model
        self.staging = Staging(self.device)  # pinned buffers, copies overlapping compute, one sync a batch

    def _forward(self, *inputs):
        out = self.model(*inputs)
        return out if isinstance(out, (tuple, list)) else (out,)

    def predict(self, x: np.ndarray, meta: np.ndarray | None = None) -> Prediction:
        meta = metadata_input(self.card, meta, len(x))
        xs = [x] if meta is None else [x, meta]
        return Prediction(self.staging.run(self._forward, xs, [self.dtype] * len(xs)))


class OnnxPredictor:
    backend = "onnxruntime"

    def __init__(
        self,
        bundle: str | Path,
        with_features: bool = True,
        device: str = "auto",
        fp16: bool = False,
        threads: int | None = None,
        providers: list[str] | None = None,
    ):
        import onnxruntime as ort

        self.card = read_card(bundle)
        path = checked_file(bundle, "onnx_fp16" if fp16 else "onnx")
        available = ort.get_available_providers()
        if providers is None:
            wanted = (
                ["CPUExecutionProvider"]
                if device == "cpu"
                else ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
            )
            providers = [p for p in wanted if p in available]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        running = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in running:  # it would run on the CPU, unsaid
            raise ConfigError(
                f"backend onnxruntime with device cuda: the session runs on {', '.join(running)}, not CUDA "
                "(the CPU-only wheel, or onnxruntime-gpu built for another CUDA); install onnxruntime-gpu for this "
                "node's CUDA, or use backend torch or tensorrt"
            )
        self.inputs = [i.name for i in self.session.get_inputs()]  # image, then metadata for a metadata model
        self.input_dtype = np.float16 if fp16 else np.float32
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = names if with_features else names[:1]

    def predict(self, x: np.ndarray, meta: np.ndarray | None = None) -> Prediction:
        feed = {self.inputs[0]: np.ascontiguousarray(x, dtype=self.input_dtype)}
        meta = metadata_input(self.card, meta, len(x))
        if meta is not None:
            feed[self.inputs[1]] = meta.astype(self.input_dtype, copy=False)
        outs = self.session.run(self.outputs, feed)
        return Prediction([o.astype(np.float32, copy=False) for o in outs])


class TensorRTPredictor:
    backend = "tensorrt"

    def __init__(
        self, bundle: str | Path, with_features: bool = True, device: str = "auto", fp16: bool = False, **_: object
    ):
        import torch

        from skinscan.runtime.tensorrt import TensorRTRunner, check_engine_target, require_tensorrt

        trt = require_tensorrt()
        self.card = read_card(bundle)
        key = "tensorrt_fp16" if fp16 else "tensorrt"
        engine = checked_file(bundle, key)  # a missing export: one line naming the command that builds it
        major, minor = torch.cuda.get_device_capability()
        check_engine_target(
            self.card.exports[key],
            trt.__version__,
            torch.cuda.get_device_name(),
            f"{major}.{minor}",
            f"skinscan convert --model {bundle} --to tensorrt{' --fp16' if fp16 else ''}",
        )
        self.runner = TensorRTRunner(engine)
        self.n_out = None if with_features else 1
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: a faked TensorRT in tests
        self.staging = Staging(device, min(MICRO_BATCH, getattr(self.runner, "max_batch", MICRO_BATCH)))

    def predict(self, x: np.ndarray, meta: np.ndarray | None = None) -> Prediction:
        meta = metadata_input(self.card, meta, len(x))
        xs = [x] if meta is None else [x, meta]
        dtypes = [getattr(self.runner, "input_dtypes", [None] * len(xs))[k] for k in range(len(xs))]
        return Prediction(self.staging.run(lambda *d: self.runner(*d)[: self.n_out], xs, dtypes))


def check_precision(backend: str, precision: str) -> None:
    """One line for a precision a backend cannot run (before any actor starts)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: must be one of {list(PRECISIONS)}")
    allowed = EXPORTED_PRECISIONS.get(backend)
    if allowed is not None and precision not in allowed:
        raise ConfigError(f"backend {backend} runs {' or '.join(allowed)} exports, not {precision}; use backend torch")


def create_predictor(
    bundle: str | Path,
    backend: str = "onnxruntime",
    with_features: bool = True,
    device: str = "auto",
    fp16: bool = False,
    threads: int | None = None,
    compile: bool = False,
    precision: str | None = None,
) -> Predictor:
    """The predictor for `backend` over a model bundle, at `precision` (fp32, fp16, bf16; `fp16=True` is fp16).
    The runtime never exports: ONNX files and TensorRT engines come from `conversion/` (`skinscan convert`), one per
    precision, and a missing one is a one-line error naming the command that builds it. `compile` is torch.compile
    for the torch backend (an engine is compiled already)."""
    precision = precision or ("fp16" if fp16 else "fp32")
    check_precision(backend, precision)
    if backend == "torch":
        return TorchPredictor(bundle, with_features, device, precision, compile, threads)
    if backend == "onnxruntime":
        return OnnxPredictor(bundle, with_features, device, precision == "fp16", threads)
    if backend == "tensorrt":
        return TensorRTPredictor(bundle, with_features, device, precision == "fp16")
    raise ConfigError(f"backend {backend!r}: must be one of {list(BACKENDS)}")
