"""GPU measurements: EnCodec encode speed, and peak memory, tokens/s and MFU of training presets.

    bash benchmarks/gpu.sh            # on a GPU machine (sets up PYTHONPATH and runs this)

Training runs the real trainer (`trainer/run.py`'s `train`) on a synthetic token folder for a few
steps; peak memory is torch.cuda.max_memory_allocated over the run, tokens/s the mean of the
logged steps after the first log interval, MFU = (6 N + 12 L d T) tokens/s over the GPU's dense
bf16 peak (nanoGPT's estimate; the attention term counts T = block_size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from narrator.config import load_config
from narrator.trainer.config import TrainConfig
from narrator.trainer.model import GPT
from narrator.trainer.run import train

REPO = Path(__file__).resolve().parents[1]
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), float("nan"))


def encodec_speed(seconds: float = 32.2, batch: int = 16, repeats: int = 3) -> str:
    """Audio seconds encoded per wall second by EnCodec 24 kHz (random-init weights, fp32) on the GPU."""
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


def train_preset(tokens: Path, out: Path, config: str, overrides: list[str], steps: int) -> dict:
    cfg = load_config(TrainConfig, REPO / config, [f"data.manifest={tokens}", f"out={out}", f"max_steps={steps}",
                                                   "eval_every=100000", "eval_batches=2", "log_every=5",
                                                   "plot_every=100000", "checkpoint_every=100000",
                                                   "keep_checkpoints=1", "data.num_workers=2", *overrides])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    assert train(cfg) == 0
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r["step"] > 5 and r["step"] < steps]
    gpt = cfg.model.gpt_config(4 * 1024 + 1)  # 4 codebooks x 1024 codes + the boundary token
    with torch.device("meta"):
        n_params = GPT(gpt).num_params()
    L, d, T = gpt.n_layer, gpt.n_embd, gpt.block_size
    rate = float(np.mean(rates)) if rates else float("nan")
    flops_per_token = 6 * n_params + 12 * L * d * T
    return {"config": config, "overrides": " ".join(overrides), "params_M": n_params / 1e6,
            "peak_GiB": torch.cuda.max_memory_allocated() / 2**30, "tokens_per_s": rate,
            "mfu": rate * flops_per_token / (peak_tflops() * 1e12), "wall_s": wall,
            "batch": f"{cfg.batch_size} x {cfg.grad_accum} x {T}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from loader_speed import write_synthetic

    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 peak {peak_tflops():g} TFLOP/s",
             "", "| what | result |", "|---|---|", encodec_speed()]
    print("\n".join(lines), flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    tokens = work / "tokens"
    write_synthetic(tokens, chunks=400, seconds=30.0, codebooks=4)
    runs = [("configs/train/gpu16gb.yaml", []),  # medium, 308 M, micro-batch 4 x grad_accum 8
            ("configs/train/gpu16gb.yaml", ["model.preset=base", "batch_size=8", "grad_accum=4"])]
    lines += ["", "| config | model | params | micro-batch x accum x block | peak memory | tokens/s | MFU | wall |",
              "|---|---|---|---|---|---|---|---|"]
    for i, (config, overrides) in enumerate(runs):
        r = train_preset(tokens, work / f"train{i}", config, overrides, args.steps)
        lines.append(f"| {r['config']} | {r['overrides'] or 'as is'} | {r['params_M']:.0f} M | {r['batch']} | "
                     f"{r['peak_GiB']:.2f} GiB | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['wall_s']:.0f} s |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_results.md").write_text(text)


if __name__ == "__main__":
    main()
