#!/usr/bin/env bash
# GPU measurements on a lent machine that has torch but not the rest of the stack and no internet:
# the missing pure-Python/manylinux wheels travel in .whl/ (see benchmarks/RESULTS.md for how they
# were fetched) and the project goes on PYTHONPATH in its installed layout (narrator.tokenizers, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/site/narrator
cp -r narrator/* /tmp/site/narrator/
cp -r tokenizers streaming trainer /tmp/site/narrator/
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/gpu_bench.py "$@"
