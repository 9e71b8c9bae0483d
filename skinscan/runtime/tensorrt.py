"""Running serialised TensorRT engines (TensorRT 10/11 tensor API) with PyTorch CUDA tensors as I/O buffers.

`tensorrt` is an optional extra (`pip install skinscan[tensorrt]`), imported lazily; without it or without
CUDA every entry point raises `MissingDependency` with the reason. Engines are built by
`conversion.tensorrt_build`; this module only loads and runs them.
"""

from __future__ import annotations

from pathlib import Path

from skinscan.errors import MissingDependency, SkinScanError

MIN_TENSORRT = 10  # the tensor-address API (execute_async_v3) and strongly typed networks


def check_version(version: str) -> None:
    """TensorRT >= 10, or a one-line MissingDependency naming the version found."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT:
        raise MissingDependency(
            f"TensorRT {version} found; SkinScan needs TensorRT >= {MIN_TENSORRT} (pip install 'skinscan[tensorrt]')"
        )


def require_tensorrt():
    """The `tensorrt` module (>= 10) and a CUDA device, or MissingDependency saying which is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        raise MissingDependency(
            "TensorRT is not installed (pip install 'skinscan[tensorrt]' on a CUDA machine)"
        ) from None
    check_version(getattr(trt, "__version__", "unknown"))
    import torch

    if not torch.cuda.is_available():
        raise MissingDependency("TensorRT needs a CUDA GPU; none is visible to PyTorch")
    return trt


class TensorRTRunner:
    """Runs a serialised engine. Copy-in, execution and output allocation all happen on one CUDA stream, so
    TensorRT never reads an input that is still being copied."""

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

    def __call__(self, *xs):
        """xs: CUDA or CPU tensors in engine input order (the NCHW image, then metadata for a metadata model);
        returns the outputs as CUDA tensors, in engine order."""
        t = self.torch
        if len(xs) != len(self.inputs):
            raise SkinScanError(f"the engine takes {len(self.inputs)} inputs {self.inputs}, not {len(xs)}")
        self.stream.wait_stream(t.cuda.current_stream())  # inputs may have been produced on the caller's stream
        with t.cuda.stream(self.stream):
            keep = []  # the device copies must outlive the launch
            for name, x in zip(self.inputs, xs):
                x = x.to("cuda", self.dtypes[name], non_blocking=True).contiguous()
                self.context.set_input_shape(name, tuple(x.shape))
                self.context.set_tensor_address(name, x.data_ptr())
                keep.append(x)
            outs = []
            for o in self.outputs:
                out = t.empty(tuple(self.context.get_tensor_shape(o)), dtype=self.dtypes[o], device="cuda")
                self.context.set_tensor_address(o, out.data_ptr())
                outs.append(out)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise SkinScanError("TensorRT execution failed")
        self.stream.synchronize()
        return outs
