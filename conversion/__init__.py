"""Conversion: ONNX export, parity checks, TensorRT engine builds, the GPU check; `conversion.convert.run(cfg)`.

Sits above `skinscan.runtime` (it checks parity through the predictors) and below the jobs that call it."""
