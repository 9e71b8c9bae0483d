#!/usr/bin/env bash
# One-call GPU check (CUDA + PyTorch + timm only): torch backend img/s at batch 1..256 for fp32/fp16/bf16/compile,
# parity against fp32, nvJPEG vs Pillow decoding. Writes $OUT/gpu_check.json when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -u conversion/gpu_check.py --out "${OUT:-.}/gpu_check.json" "$@"
