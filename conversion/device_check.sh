#!/usr/bin/env bash
# One-call device check of the per-image GPU path (torch + torchvision + timm + onnxruntime; no Ray, no TensorRT):
# nvJPEG -> GPU resize/normalise -> U-Net + Swin-T (fp32/fp16/bf16/compile) -> fast CAM, img/s per batch size and
# parity against fp32 on the CPU. Real JPEGs from .gpu/images when carried there (the ISIC Archive sample), else
# synthetic ones. Writes $OUT/device_check.json (copy it to conversion/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
images=()
[ -d .gpu/images ] && images=(--images .gpu/images)
PYTHONUNBUFFERED=1 python3 -m conversion.device_check "${images[@]}" --out "${OUT:-.}/device_check.json" "$@"
