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


def check_engine_target(record, tensorrt_version: str, gpu: str, compute_capability: str, remedy: str) -> None:
    """An engine runs only under the TensorRT version (major.minor) and on the GPU architecture it was built for:
    anything else is refused in one line naming the command that builds one here (an engine without the record,
    from before it was kept, is tried)."""
    if record.tensorrt_version is None or record.compute_capability is None:
        return
    built = ".".join(record.tensorrt_version.split(".")[:2])
    here = ".".join(tensorrt_version.split(".")[:2])
    if built != here or record.compute_capability != compute_capability:
        raise SkinScanError(
            f"{record.file} was built with TensorRT {built} for compute capability {record.compute_capability} "
            f"({record.gpu}); this node has TensorRT {here} and {compute_capability} ({gpu}): build one here with "
            f"`{remedy}`"
        )


def profile_chunks(n: int, max_batch: int) -> list[slice]:
    """A batch of `n` as slices of at most the engine profile's largest batch."""
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)] or [slice(0, 0)]


class TensorRTRunner:
    """Runs a serialised engine on the caller's current CUDA stream: copy-in, execution and output allocation are
    queued there in order, so TensorRT never reads an input still being copied, and nothing waits for the GPU
    (the caller synchronises once a batch: `runtime.staging`)."""

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
        self.max_batch = min(self.engine.get_tensor_profile_shape(n, 0)[2][0] for n in self.inputs)
        self.input_dtypes = [self.dtypes[n] for n in self.inputs]

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
        returns the outputs as CUDA tensors, in engine order. A batch above the engine profile's largest is run in
        pieces of that size."""
        t = self.torch
        if len(xs) != len(self.inputs):
            raise SkinScanError(f"the engine takes {len(self.inputs)} inputs {self.inputs}, not {len(xs)}")
        pieces = [self._run(*(x[s] for x in xs)) for s in profile_chunks(len(xs[0]), self.max_batch)]
        return pieces[0] if len(pieces) == 1 else [t.cat(outs) for outs in zip(*pieces)]

    def _run(self, *xs):
        t = self.torch
        stream = t.cuda.current_stream()
        keep = []  # the device copies must outlive the launch
        for name, x in zip(self.inputs, xs):
            x = x.to("cuda", self.dtypes[name], non_blocking=True).contiguous()
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise SkinScanError(
                    f"TensorRT refused input {name} of shape {tuple(x.shape)} (the engine's profile allows "
                    f"batches up to {self.max_batch}; rebuild it with `skinscan convert --max-batch N`)"
                )
            self.context.set_tensor_address(name, x.data_ptr())
            keep.append(x)
        outs = []
        for o in self.outputs:
            out = t.empty(tuple(self.context.get_tensor_shape(o)), dtype=self.dtypes[o], device="cuda")
            self.context.set_tensor_address(o, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise SkinScanError("TensorRT execution failed")
        for x in keep:
            x.record_stream(stream)  # freed only once the engine has read them
        return outs
