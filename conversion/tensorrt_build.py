"""TensorRT engines from ONNX, written against the TensorRT 10 and 11 Python APIs.

Networks are built strongly typed: precision comes from the ONNX graph, so an FP16 engine is built from the FP16
ONNX export (`export_onnx(..., fp16=True)`). TensorRT 11 removed the FP16/INT8 builder flags and types every
network strongly; TensorRT 10 (common in NGC images) types weakly unless `STRONGLY_TYPED` is set at creation, and a
weakly typed FP16 graph there gets no FP16 kernels without the removed flag. Setting the flag is required on 10
and ignored on 11, so one build path gives the same engine on both.
`tensorrt` is an optional extra (`pip install skinscan[tensorrt]`), imported lazily; without it or without
CUDA every entry point raises `MissingDependency` with the reason. Engines are run by
`skinscan.runtime.tensorrt.TensorRTRunner`.
"""

from __future__ import annotations

from pathlib import Path

from skinscan.errors import SkinScanError
from skinscan.runtime.tensorrt import require_tensorrt


def strongly_typed_flags(trt) -> int:
    """`create_network` flags for a strongly typed network (the flag is deprecated and ignored on TensorRT 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    onnx_file: str | Path,
    engine_file: str | Path,
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 256,
    workspace_gib: float = 4.0,
) -> Path:
    """Parse the ONNX graph into a strongly typed network and serialise an engine with a dynamic-batch profile
    (`opt_batch`: the batch TensorRT tunes kernels for; give it the batch the screening actors send)."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise SkinScanError(f"TensorRT profile needs 1 <= min {min_batch} <= opt {opt_batch} <= max {max_batch}")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_file).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkinScanError(f"TensorRT could not parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    # TF32 (on by default for FP32 layers on Ampere and later) rounds matmul inputs to 10 mantissa bits: a trained
    # Swin's FP32 engine would then miss the 1e-3 parity tolerance; FP16 engines are typed by the graph anyway
    tf32 = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if tf32 is not None:
        config.clear_flag(tf32)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):  # the image, and the metadata vector of a metadata model: batch dynamic
        inp = network.get_input(i)
        rest = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SkinScanError(f"TensorRT failed to build an engine from {onnx_file}")
    engine_file = Path(engine_file)
    engine_file.write_bytes(bytes(serialized))
    return engine_file
