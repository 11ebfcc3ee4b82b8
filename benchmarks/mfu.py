"""MFU of a GPT-2-small-sized model on the GPU: what each change to the training step buys, and where a step's
GPU time goes.

    python benchmarks/mfu.py                  # on a GPU (benchmarks/gpu.sh runs it): the variants, then a profile
    python benchmarks/mfu.py --device cpu --preset tiny --steps 3 --warmup 1   # anywhere: the script itself

Every variant is the trainer's step without its data loader: the base preset (12 x 768, GPT-2 small's size)
under bf16 autocast, tied embeddings, fused AdamW, gradient clipping at 1.0 and the loss read back once per
step (what `trainer/run.py` does), on random tokens already on the GPU, for --steps steps after --warmup
(compilation). The rows change one thing at a time from the shipped gpu16gb.yaml shape (block 2048,
micro-batch 8, dropout 0.1, vocab 4097): torch.compile; the vocabulary padded to a multiple of 64 (the
extra logits are never targets); no dropout; GPT-2's block of 1024 with a larger micro-batch; then
gpu16gb.yaml's grad_accum 8 (the optimizer once per 8 micro-batches) and 6 attention heads of 128 instead
of 12 of 64. Times are per micro-batch. MFU is the
trainer's: estimate.Workload.train_flops_per_token (6 N + 12 L d T, the real vocabulary) x tokens/s over
the device's dense bf16 peak.

The profile (torch.profiler, --profile-steps steps of variant --profile, the shipped shape compiled) sums
CUDA kernel time by kind: matmuls (cuBLAS/CUTLASS), attention (flash/efficient SDPA), fused elementwise
and norm kernels (Triton or ATen), the optimizer, cross-entropy; and the share of the wall time the GPU
was busy at all.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from narrator.trainer.estimate import Workload, peak_tflops
from narrator.trainer.model import GPT, PRESETS, GPTConfig

VOCAB = 4097  # 4 codebooks x 1024 + the boundary token


@dataclass(frozen=True)
class Variant:
    name: str
    block: int = 2048
    batch: int = 8
    dropout: float = 0.1
    vocab_multiple: int = 1  # pad the embedding rows up to a multiple of this
    compile: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step
    n_head: int | None = None  # None: the preset's

    @property
    def padded_vocab(self) -> int:
        return -(-VOCAB // self.vocab_multiple) * self.vocab_multiple


VARIANTS = [
    Variant("gpu16gb.yaml shape, eager"),
    Variant("+ torch.compile", compile=True),
    Variant("+ vocab padded to 4160", compile=True, vocab_multiple=64),
    Variant("+ dropout 0", compile=True, vocab_multiple=64, dropout=0.0),
    Variant("+ block 1024, micro-batch 16", compile=True, vocab_multiple=64, dropout=0.0, block=1024, batch=16),
    Variant("+ micro-batch 32", compile=True, vocab_multiple=64, dropout=0.0, block=1024, batch=32),
    Variant("compile, dropout 0, grad_accum 8 (gpu16gb.yaml's)", compile=True, dropout=0.0, grad_accum=8),
    Variant("+ 6 heads of 128, not 12 of 64", compile=True, dropout=0.0, grad_accum=8, n_head=6),
]


def build(variant: Variant, preset: str, device: torch.device) -> tuple[GPT, torch.optim.AdamW]:
    torch.manual_seed(0)
    shape = {**PRESETS[preset], **({"n_head": variant.n_head} if variant.n_head else {})}
    model = GPT(GPTConfig(block_size=variant.block, vocab_size=variant.padded_vocab, dropout=variant.dropout,
                          **shape)).to(device)
    if variant.compile:
        model.compile()
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    return model, optimizer


def step(model: GPT, optimizer: torch.optim.AdamW, x: torch.Tensor, y: torch.Tensor, device: torch.device,
         grad_accum: int = 1) -> float:
    """One optimizer step as the trainer makes it: `grad_accum` micro-batches, then one read-back."""
    losses = []
    for _ in range(grad_accum):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, loss = model(x, y)
        (loss / grad_accum).backward()
        losses.append(loss.detach())
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([*losses, norm]).tolist()[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(variant: Variant, preset: str, steps: int, warmup: int, device: torch.device) -> dict:
    model, optimizer = build(variant, preset, device)
    x = torch.randint(0, VOCAB, (variant.batch, variant.block), device=device)
    y = torch.randint(0, VOCAB, (variant.batch, variant.block), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(warmup):
        step(model, optimizer, x, y, device, variant.grad_accum)
    sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, x, y, device, variant.grad_accum)
    sync(device)
    seconds = (time.perf_counter() - start) / steps / variant.grad_accum  # per micro-batch
    shape = PRESETS[preset]
    work = Workload(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"], vocab_size=VOCAB,
                    block_size=variant.block, batch_size=variant.batch, dropout=variant.dropout)
    tokens_per_s = variant.batch * variant.block / seconds
    tflops = work.train_flops_per_token * tokens_per_s / 1e12
    peak = peak_tflops(device)
    return {"model": model, "optimizer": optimizer, "x": x, "y": y, "grad_accum": variant.grad_accum,
            "ms": seconds * 1e3, "tokens_per_s": tokens_per_s,
            "tflops": tflops, "mfu": tflops / peak if peak else None, "warm_s": warm_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")}


KINDS = [  # (kind, substrings of a kernel's name), first match wins
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("cross-entropy", ("log_softmax", "nll_loss", "cross_entropy")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "sm80", "cublas", "wgmma")),
    ("fused elementwise / norm (Triton)", ("triton",)),
    ("elementwise / norm (ATen)", ("elementwise", "vectorized", "layer_norm", "reduce", "gelu", "dropout", "fused")),
]


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "other")


def profile(run: dict, steps: int, device: torch.device) -> list[str]:
    """Kernel time by kind over `steps` steps, and how much of the wall time the GPU was busy."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(run["model"], run["optimizer"], run["x"], run["y"], device, run["grad_accum"])
        sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    by_kind: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        us = event.self_device_time_total if device.type == "cuda" else 0.0
        if us > 0 and event.device_type == torch.autograd.DeviceType.CUDA:
            by_kind[kind_of(event.key)] += us
            top[event.key] += us
    busy = sum(by_kind.values())
    lines = [f"GPU busy {busy / wall_us:.1%} of {wall_us / steps / 1e3:.1f} ms per step (kernel time / wall time)",
             "| kernel kind | share of kernel time | ms per step |", "|---|---|---|"]
    lines += [f"| {kind} | {us / busy:.1%} | {us / steps / 1e3:.2f} |"
              for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1])] if busy else ["| (no CUDA kernels) | | |"]
    lines += ["", "top kernels:"] + [f"  {us / steps / 1e3:7.2f} ms  {kind_of(k):<12} {k[:110]}"
                                      for k, us in sorted(top.items(), key=lambda kv: -kv[1])[:12]]
    if device.type == "cuda":  # the profiler's own table too: it holds the CPU side (launches, syncs) as well
        lines += ["", prof.key_averages().table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60)]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="base", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", type=lambda v: [int(i) for i in v.split(",")], default=None,
                    help="variant numbers to run, e.g. 0,1,5 (default: all)")
    ap.add_argument("--profile", type=int, default=1, help="the variant profiled, right after its row (-1: none)")
    ap.add_argument("--profile-steps", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.preset} preset, bf16 peak {peak_tflops(device) or 'unknown'} "
          f"TFLOP/s; {args.steps} steps after {args.warmup}\n", flush=True)
    print("| variant | block x micro-batch | ms per micro-batch | tokens/s | TFLOP/s | MFU | peak memory | warm-up |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    profiled = []
    for i, variant in enumerate(VARIANTS):
        if args.only is not None and i not in args.only:
            continue
        run = None  # the last variant's model freed before the next is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            run = measure(variant, args.preset, args.steps, args.warmup, device)
        except Exception as e:  # noqa: BLE001 - one failed variant still leaves the others' rows
            print(f"| {i}: {variant.name} | {variant.block} x {variant.batch} | failed: {type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0][:200]} |", flush=True)
            continue
        mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "-"
        print(f"| {i}: {variant.name} | {variant.block} x {variant.batch} | {run['ms']:.1f} | {run['tokens_per_s']:,.0f} | "
              f"{run['tflops']:.0f} | {mfu} | {run['peak_gib']:.2f} GiB | {run['warm_s']:.0f} s |", flush=True)
        if i == args.profile:  # kept to print after the table
            profiled = [f"profile of variant {i} ({variant.name}), {args.profile_steps} steps:",
                        *profile(run, args.profile_steps, device)]
            print("(profiled)", flush=True)
    print("\n" + "\n".join(profiled), flush=True)


if __name__ == "__main__":
    main()
