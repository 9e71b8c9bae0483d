"""TensorRT engines from ONNX, written against the TensorRT 11 Python API.

TensorRT 11 removed the FP16/INT8 builder flags: networks are strongly typed and precision comes from the
ONNX graph, so an FP16 engine is built from the FP16 ONNX export (`export_onnx(..., fp16=True)`).
`tensorrt` is an optional extra (`pip install skinscan[tensorrt]`), imported lazily; without it or without
CUDA every entry point raises `MissingDependency` with the reason. Engines are run by
`skinscan.runtime.tensorrt.TensorRTRunner`.
"""

from __future__ import annotations

from pathlib import Path

from skinscan.errors import SkinScanError
from skinscan.runtime.tensorrt import require_tensorrt


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
