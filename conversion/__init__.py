"""Model conversion: ONNX export with parity checks, TensorRT engines (optional extra)."""
