"""GPU measurements: EnCodec encode speed, and peak memory (vs `narrator estimate`), tokens/s and MFU of the 16 GB presets.

    bash benchmarks/gpu.sh                 # on a GPU machine (sets up PYTHONPATH and runs this)
    python benchmarks/gpu_bench.py --dry-run   # anywhere: the runs it would make and their estimates

Each training run is the real trainer (`trainer/run.py`'s `train`) for a few steps on a synthetic
token folder, in a process of its own so one run's memory never counts in the next. Runs: every
configs/train/gpu16gb*.yaml (a config named *offload* under DeepSpeed ZeRO-2 with optimizer offload,
set up in-process as one rank: RANK, WORLD_SIZE, MASTER_ADDR/PORT and Accelerate's DeepSpeed
variables) and gpu16gb.yaml with the base preset. grad_accum is cut to 2 to keep runs short: memory
only depends on it being > 1, and the estimate is made with the same override. Peak memory is
torch.cuda.max_memory_allocated over the run (what the estimate's `peak` predicts); tokens/s the mean
of the logged steps after the first; MFU = (6 N + 12 L d T) tokens/s over the GPU's dense bf16 peak
(nanoGPT's estimate; with activation checkpointing the recomputed forward is not counted).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
MEASURE = ["grad_accum=2"]  # see the module docstring


def planned_runs(which: str = "presets") -> list[tuple[str, list[str], str]]:
    """(config, overrides, recipe) for every run: each 16 GB preset as shipped, and base for comparison;
    or ("zero") gpu16gb.yaml under ZeRO-1, 2 and 3 on one rank, to check the estimate's DeepSpeed terms."""
    if which == "zero":
        return [("configs/train/gpu16gb.yaml", [], f"zero{stage}") for stage in (1, 2, 3)]
    runs = [("configs/train/gpu16gb.yaml", ["model.preset=base", "batch_size=8"], "ddp")]
    for path in sorted((REPO / "configs" / "train").glob("gpu16gb*.yaml")):
        runs.append((str(path.relative_to(REPO)), [], "zero2-offload" if "offload" in path.name else "ddp"))
    return sorted(runs, key=lambda run: run[2] != "ddp")  # DeepSpeed last: the others are measured even if it fails


def estimate(config: str, overrides: list[str], recipe: str):
    from narrator.trainer.estimate import RECIPES, estimate_memory, load_train_config, workload_from_config

    cfg = load_train_config(str(REPO / config), [*overrides, *MEASURE])
    return estimate_memory(workload_from_config(cfg), next(r for r in RECIPES if r.name == recipe))


def peak_tflops() -> float:
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), float("nan"))


def encodec_speed(seconds: float = 32.2, batch: int = 16, repeats: int = 3) -> str:
    """Audio seconds encoded per wall second by EnCodec 24 kHz (random-init weights, fp32) on the GPU."""
    import numpy as np
    import torch

    from narrator.tokenizers.config import EncodecConfig, WeightsConfig
    from narrator.tokenizers.encodec import EncodecTokenizer, synthetic_speech

    tok = EncodecTokenizer(EncodecConfig(bandwidth=3.0, weights=WeightsConfig(mode="random")), device="cuda")
    audio = np.stack([synthetic_speech(seconds, seed=i).astype(np.float32) for i in range(batch)])
    tok.encode(audio)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        tok.encode(audio)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / repeats
    return (f"| EnCodec 24 kHz encode, 3 kbps, fp32, batch {batch} x {seconds:g} s | {batch * seconds / wall:,.0f}x real time "
            f"({wall * 1000:.0f} ms per batch) |")


def one_rank_deepspeed_env(recipe: str, port: int = 29517) -> dict[str, str]:
    """What `accelerate launch --config_file launch/accelerate/deepspeed_zero2_offload.yaml --num_processes 1`
    sets (for "zero2-offload"; the stage and offload follow `recipe`)."""
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": recipe[4],
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu" if recipe.endswith("offload") else "none",
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}


def train_run(tokens: Path, out: Path, config: str, overrides: list[str], steps: int) -> dict:
    """In this process: train `config` for `steps` steps and return its measurements."""
    import numpy as np
    import torch

    from narrator.trainer.estimate import load_train_config, workload_from_config
    from narrator.trainer.run import train

    cfg = load_train_config(str(REPO / config), [f"data.manifest={tokens}", f"out={out}", f"max_steps={steps}",
                                                 "eval_every=100000", "eval_batches=1", "log_every=1",
                                                 "plot_every=100000", "checkpoint_every=100000", "keep_checkpoints=1",
                                                 "data.num_workers=2", *overrides, *MEASURE])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    assert train(cfg) == 0
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if 2 < r["step"] < steps]  # past start-up and the first CPU steps
    w = workload_from_config(cfg)  # vocab 4097, as the synthetic tokens
    L, d, T, n_params = w.n_layer, w.n_embd, w.block_size, w.params
    rate = float(np.mean(rates)) if rates else float("nan")
    return {"peak_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved(),
            "host_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tokens_per_s": rate,
            "mfu": rate * (6 * n_params + 12 * L * d * T) / (peak_tflops() * 1e12), "wall_s": wall,
            "batch": f"{cfg.batch_size} x {T}"}


def child(args: argparse.Namespace) -> None:
    if args.recipe != "ddp":
        os.environ.update(one_rank_deepspeed_env(args.recipe))
    result = train_run(Path(args.tokens), Path(args.out), args.config, args.overrides, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dry-run", action="store_true", help="print the runs and their estimates; no GPU needed")
    ap.add_argument("--skip-encodec", action="store_true")
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds one training run may take")
    ap.add_argument("--runs", choices=["presets", "zero"], default="presets",
                    help="presets: every gpu16gb*.yaml (and base); zero: gpu16gb.yaml under ZeRO-1/2/3 on one rank")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--recipe", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    header = [("| config | overrides | recipe | params | micro-batch x block | estimated peak | measured peak | "
               "estimate / measured | reserved | tokens/s | MFU | wall |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if args.dry_run:
        print("\n".join(header))
        for config, overrides, recipe in planned_runs(args.runs):
            e = estimate(config, overrides, recipe)
            print(f"| {config} | {' '.join(overrides) or 'as is'} | {recipe} | | | {e.peak / 2**30:.2f} GiB | (not run) | | | | | |")
        return

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from loader_speed import write_synthetic

    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 peak {peak_tflops():g} TFLOP/s", ""]
    if not args.skip_encodec:
        lines += ["| what | result |", "|---|---|", encodec_speed(), ""]
    print("\n".join(lines), flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    tokens = work / "tokens"
    write_synthetic(tokens, chunks=200, seconds=30.0, codebooks=4)
    lines += header
    print("\n".join(header), flush=True)
    from narrator.trainer.estimate import load_train_config, workload_from_config

    for i, (config, overrides, recipe) in enumerate(planned_runs(args.runs)):
        if recipe != "ddp" and importlib.util.find_spec("deepspeed") is None:
            lines.append(f"| {config} | | {recipe} | skipped: deepspeed not installed |")
            print(lines[-1], flush=True)
            continue
        est = estimate(config, overrides, recipe)
        params = workload_from_config(load_train_config(str(REPO / config), overrides)).params
        cmd = [sys.executable, __file__, "--child", "--config", config, "--recipe", recipe, "--tokens", str(tokens),
               "--out", str(work / f"train{i}"), "--steps", str(args.steps), *(x for o in overrides for x in ("--set", o))]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.run_timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""  # bytes, despite text=True
            proc = subprocess.CompletedProcess(cmd, -1, out, f"timed out after {args.run_timeout} s")
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            lines.append(f"| {config} | {' '.join(overrides) or 'as is'} | {recipe} | failed: {last[:300]} |")
            print(lines[-1], flush=True)
            print(proc.stderr[-3000:], file=sys.stderr, flush=True)
            continue
        r = json.loads(found[-1][len("RESULT "):])
        lines.append(f"| {config} | {' '.join(overrides) or 'as is'} | {recipe} | {params / 1e6:,.0f} M | {r['batch']} | "
                     f"{est.peak / 2**30:.2f} GiB | {r['peak_bytes'] / 2**30:.2f} GiB | {est.peak / r['peak_bytes']:.3f} | "
                     f"{r['reserved_bytes'] / 2**30:.2f} GiB | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['wall_s']:.0f} s |")
        if recipe.endswith("offload"):
            lines[-1] += f" host peak RSS {r['host_peak_bytes'] / 2**30:.1f} GiB (estimated offload state {est.host / 2**30:.1f} GiB)"
        print(lines[-1], flush=True)
        if os.environ.get("OUT"):  # after every run: a later run that hangs leaves the earlier rows
            Path(os.environ["OUT"], "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
