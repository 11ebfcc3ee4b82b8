#!/usr/bin/env bash
# GPU measurements on a lent machine that has torch but not the rest of the stack and no internet, printed
# as one table (benchmarks/gpu_bench.py; ~8 minutes on one H100): tokenize 1 h of audio, both streams, with
# GPU actors in fp16 (end to end and the bare models), then each 16 GB preset trained a few hundred steps
# under bf16 with and without model.compile (tokens/s, MFU, peak memory vs `narrator estimate`).
# The missing pure-Python/manylinux wheels travel in .whl/ (see benchmarks/RESULTS.md for how they were
# fetched) and the project goes on PYTHONPATH in its installed layout (narrator.tokenizers, ...).
# The ZeRO-2 offload preset also needs deepspeed-0.19.8-py3-none-any.whl (pip's locally built wheel)
# and pydantic, pydantic_core (cp312), annotated_types, typing_inspection, hjson in .whl/; without
# deepspeed its row says "skipped: deepspeed not installed". CPU Adam compiles on first use (~1 min).
# The tokenize rows need ray[data] (with pyarrow), openai-whisper (numba, tiktoken) and scikit-learn;
# without them their row says which are missing. On a machine with the project installed
# (make install), run `python benchmarks/gpu_bench.py` directly instead.
#   bash benchmarks/gpu.sh                                   # everything
#   bash benchmarks/gpu.sh --skip-tokenize --compile off     # the presets only, eager
#   python benchmarks/gpu_bench.py --dry-run                 # anywhere: the plan, its steps and memory estimates
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/site/narrator
cp -r narrator/* /tmp/site/narrator/
cp -r tokenizers streaming trainer /tmp/site/narrator/
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/gpu_bench.py "$@"
