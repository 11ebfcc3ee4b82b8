#!/usr/bin/env bash
# GPU measurements on a lent machine that has torch but not the rest of the stack and no internet:
# benchmarks/mfu.py (what each change to a GPT-2-small-sized training step buys in MFU, and a profile of
# where its GPU time goes), then benchmarks/gpu_bench.py as one table (~8 minutes on one H100): tokenize
# 1 h of audio, both streams, with GPU actors in fp16 (end to end and the bare models), then each 16 GB
# preset trained a few hundred steps under bf16 with and without model.compile (tokens/s, MFU, peak
# memory vs `narrator estimate`).
# The missing pure-Python/manylinux wheels travel in .whl/ (see benchmarks/RESULTS.md for how they were
# fetched) and the project goes on PYTHONPATH in its installed layout (narrator.tokenizers, ...).
# The ZeRO-2 offload preset also needs deepspeed-0.19.8-py3-none-any.whl (pip's locally built wheel)
# and pydantic, pydantic_core (cp312), annotated_types, typing_inspection, hjson in .whl/; without
# deepspeed its row says "skipped: deepspeed not installed". CPU Adam compiles on first use (~1 min).
# The tokenize rows need ray (with pyarrow), openai-whisper (numba, tiktoken) and scikit-learn; the H100
# image has pyarrow, numba, tiktoken and scikit-learn, so .whl/ holds ray (its wheel less ray/jars,
# rllib, serve, llm and the dashboard's web client, to fit the 64 MiB a call may carry), jsonschema,
# jsonschema_specifications, referencing, rpds_py, more_itertools and openai_whisper (pip's local wheel);
# without them their row says which are missing. On a machine with the project installed
# (make install), run `python benchmarks/gpu_bench.py` directly instead.
#   bash benchmarks/gpu.sh                                   # everything: mfu.py, then gpu_bench.py
#   bash benchmarks/gpu.sh --skip-tokenize --compile off     # gpu_bench.py with these arguments (no mfu.py)
#   bash benchmarks/gpu.sh python3 benchmarks/mfu.py --only 0,1   # any command (not an option), after the same set-up
#   python benchmarks/gpu_bench.py --dry-run                 # anywhere: the plan, its steps and memory estimates
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/site/narrator
cp -r narrator/* /tmp/site/narrator/
cp -r tokenizers streaming trainer /tmp/site/narrator/
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# Ray puts the driver's working directory on its workers' sys.path, ahead of PYTHONPATH: from the checkout, its
# narrator/ (which holds no tokenizers/) would shadow the installed package. So run from a folder beside it.
repo=$(pwd)
mkdir -p /tmp/gpu-run
ln -sfn "$repo/benchmarks" /tmp/gpu-run/benchmarks
ln -sfn "$repo/configs" /tmp/gpu-run/configs
cd /tmp/gpu-run
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [[ $# -gt 0 && "$1" != -* ]]; then
  "$@"
elif [[ $# -gt 0 ]]; then
  python3 benchmarks/gpu_bench.py "$@"
else
  python3 benchmarks/mfu.py
  python3 benchmarks/gpu_bench.py
fi
