#!/usr/bin/env bash
# Wheels the device check needs that the GPU machine (Python 3.12, x86-64, no registry) lacks, at the versions of
# constraints.txt, into .whl/ (git-ignored; carry it: run(carry=[".whl"])). About 3 MB. typing-extensions
# is there already, maybe older than pydantic needs: the lock's (newer, backward compatible) comes first on the path.
# pytorch-grad-cam is published as a source archive only: its pure wheel is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -E "^$1==" constraints.txt | cut -d' ' -f1; }
binary=()
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions ttach; do binary+=("$(pin "$name")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${binary[@]}"
python3 -m pip wheel -q --no-deps -w .whl "$(pin grad-cam)"
ls .whl
