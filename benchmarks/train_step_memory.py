"""Peak GPU memory and tokens/s of bare training steps, with and without activation checkpointing.

    python benchmarks/train_step_memory.py                          # on a CUDA machine
    python benchmarks/train_step_memory.py --models medium:24:16:1024,gpt2-large:36:20:1280 --batches 4,8

A step is what the trainer does per micro-batch on one GPU: bf16 autocast forward, backward, gradient
clipping and an AdamW step (fused, as optim.fused: auto picks on CUDA), on random tokens with the
flat 4-codebook vocabulary (4097). Peak is torch.cuda.max_memory_allocated over the timed steps.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from narrator.trainer.config import OptimConfig
from narrator.trainer.model import GPT, GPTConfig
from narrator.trainer.optim import build_optimizer


def measure(name: str, sizes: dict, block: int, batch: int, checkpointing: bool, steps: int) -> str:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block, vocab_size=4097, dropout=0.0, activation_checkpointing=checkpointing,
                          **sizes)).to(device)
    optimizer = build_optimizer(model, OptimConfig(), device)
    window = torch.randint(0, 4096, (batch, block + 1), device=device)
    x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        for _ in range(2):  # warm-up: kernels chosen, optimizer state allocated
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        speed = f"{batch * block / wall:,.0f}"
    except torch.OutOfMemoryError:
        peak, speed = "out of memory", "-"
    params = 12 * sizes["n_layer"] * sizes["n_embd"] ** 2 + (4097 + block) * sizes["n_embd"]
    return (f"| {name} (~{params / 1e6:.0f} M) | {block} | {batch} | {'on' if checkpointing else 'off'} | {peak} | "
            f"{speed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="medium:24:16:1024,gpt2-large:36:20:1280",
                        help="comma-separated name:n_layer:n_head:n_embd")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--batches", default="4,8", help="micro-batch sizes")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; bf16 autocast, fused AdamW")
    print("| model | block | micro-batch | activation checkpointing | peak memory | tokens/s |")
    print("|---|---|---|---|---|---|")
    for spec in args.models.split(","):
        name, n_layer, n_head, n_embd = spec.split(":")
        sizes = {"n_layer": int(n_layer), "n_head": int(n_head), "n_embd": int(n_embd)}
        for batch in (int(b) for b in args.batches.split(",")):
            for checkpointing in (False, True):
                print(measure(name, sizes, args.block_size, batch, checkpointing, args.steps), flush=True)
                gc.collect()  # the last model and optimizer state gone before the next peak is measured
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
