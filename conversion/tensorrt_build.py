"""TensorRT engines from ONNX, written against the TensorRT 11 Python API.

TensorRT 11 removed the FP16/INT8 builder flags: networks are strongly typed and precision comes from the
ONNX graph, so an FP16 engine is built from the FP16 ONNX export (`export_onnx(..., fp16=True)`).
`tensorrt` is an optional extra (`pip install skinscan[tensorrt]`), imported lazily; without it or without
CUDA every entry point raises `MissingDependency` with the reason.
"""

from __future__ import annotations

from pathlib import Path

from skinscan.errors import MissingDependency, SkinScanError


def require_tensorrt():
    """The `tensorrt` module and a CUDA device, or MissingDependency saying which is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        raise MissingDependency(
            "TensorRT is not installed (pip install 'skinscan[tensorrt]' on a CUDA machine)"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise MissingDependency("TensorRT needs a CUDA GPU; none is visible to PyTorch")
    return trt


def build_engine(
    onnx_file: str | Path,
    engine_file: str | Path,
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 256,
    workspace_gib: float = 4.0,
) -> Path:
    """Parse the ONNX graph into a strongly typed network and serialise an engine with a dynamic-batch profile."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 11: networks are always strongly typed (flag deprecated)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_file).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkinScanError(f"TensorRT could not parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    profile.set_shape(inp.name, (min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SkinScanError(f"TensorRT failed to build an engine from {onnx_file}")
    engine_file = Path(engine_file)
    engine_file.write_bytes(bytes(serialized))
    return engine_file


class TensorRTRunner:
    """Runs a serialised engine with PyTorch CUDA tensors as I/O buffers (no pycuda needed)."""

    def __init__(self, engine_file: str | Path):
        import torch

        trt = require_tensorrt()
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise SkinScanError(f"{engine_file}: not a TensorRT engine for this TensorRT version / GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n), trt) for n in names}
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, dt, trt):
        t = self.torch
        return {
            trt.float32: t.float32,
            trt.float16: t.float16,
            trt.bfloat16: t.bfloat16,
            trt.int32: t.int32,
            trt.int64: t.int64,
        }[dt]

    def __call__(self, x):
        """x: CUDA or CPU tensor NCHW; returns the outputs as CUDA tensors, in engine order."""
        t = self.torch
        name = self.inputs[0]
        x = x.to("cuda", self.dtypes[name]).contiguous()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for o in self.outputs:
            out = t.empty(tuple(self.context.get_tensor_shape(o)), dtype=self.dtypes[o], device="cuda")
            self.context.set_tensor_address(o, out.data_ptr())
            outs.append(out)
        with t.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise SkinScanError("TensorRT execution failed")
        self.stream.synchronize()
        return outs
