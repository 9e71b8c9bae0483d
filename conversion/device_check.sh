#!/usr/bin/env bash
# One-call device check of the screening stages as they ship, without Ray (see skinscan/bench/device_check.py):
# decode (nvJPEG) -> segment -> classify (torch fp32/fp16/bf16, with and without torch.compile; fast CAM), Grad-CAM,
# onnxruntime's CUDA provider, TensorRT where it imports, one training epoch; parity against fp32 on the CPU.
# The GPU machine lacks pydantic and pytorch-grad-cam: `bash conversion/device_wheels.sh` fetches their pinned wheels
# into .whl, which the call carries and this script installs. Real JPEGs from .gpu/images when carried there, else
# synthetic ones. Writes $OUT/device_check.json (copy it to conversion/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
needs() { ! python3 -c "import pydantic, pytorch_grad_cam" 2>/dev/null; }
if needs && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if needs; then
  echo "device_check: pydantic or pytorch-grad-cam missing: run 'bash conversion/device_wheels.sh' and carry .whl" >&2
  exit 2
fi
images=()
[ -d .gpu/images ] && images=(--images .gpu/images)
PYTHONUNBUFFERED=1 python3 -m skinscan.bench.device_check "${images[@]}" --out "${OUT:-.}/device_check.json" "$@"
