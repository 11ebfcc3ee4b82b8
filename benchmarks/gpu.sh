#!/usr/bin/env bash
# GPU measurements on a lent machine that has torch but not the rest of the stack and no internet:
# the missing pure-Python/manylinux wheels travel in .whl/ (see benchmarks/RESULTS.md for how they
# were fetched) and the project goes on PYTHONPATH in its installed layout (narrator.tokenizers, ...).
# The ZeRO-2 offload preset also needs deepspeed-0.19.8-py3-none-any.whl (pip's locally built wheel)
# and pydantic, pydantic_core (cp312), annotated_types, typing_inspection, hjson in .whl/; without
# deepspeed its row says "skipped: deepspeed not installed". CPU Adam compiles on first use (~1 min).
#   bash benchmarks/gpu.sh --skip-encodec --steps 6     # the 16 GB presets only, ~4 minutes on an H100
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/site/narrator
cp -r narrator/* /tmp/site/narrator/
cp -r tokenizers streaming trainer /tmp/site/narrator/
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/gpu_bench.py "$@"
