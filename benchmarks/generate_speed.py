"""Generation speed with and without the KV cache: tokens/s of GPT.generate and their ratio.

    python benchmarks/generate_speed.py                                   # demo and small presets on the CPU
    python benchmarks/generate_speed.py --device cuda --presets demo,small,base --block-size 1024 --new-tokens 2048

Random-init weights (speed does not depend on them) and the flat 4-codebook vocabulary (4097). The
run generates past block_size, so the cached side pays for its context jumps (GPT.generate). Both
sides draw from the same seed, and the row says whether they sampled the same tokens.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass

import torch

from narrator.trainer.model import GPT, PRESETS, GPTConfig


def timed_generate(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool,
                   top_k: int) -> tuple[float, torch.Tensor]:
    """Wall seconds of one generate call (the device synchronised) and its tokens."""
    generator = torch.Generator(device=prompt.device).manual_seed(0)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, top_k=top_k, generator=generator, use_cache=use_cache)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


@dataclass
class GenerateSpeed:
    preset: str
    params: int
    new_tokens: int  # batch x new tokens per call
    without_cache: float  # tokens/s
    with_cache: float
    same: bool  # both sides sampled the same tokens

    @property
    def ratio(self) -> float:
        return self.with_cache / self.without_cache


def measure(preset: str, device: torch.device | str = "cpu", block_size: int = 256, prompt_tokens: int = 64,
            new_tokens: int = 512, batch: int = 1, top_k: int = 250) -> GenerateSpeed:
    """Tokens/s of GPT.generate with and without the KV cache, on a random-init `preset` (warm-up calls first)."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=4097, dropout=0.0, **PRESETS[preset]))
    model = model.to(device).eval()
    prompt = torch.randint(0, 4096, (batch, prompt_tokens), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        timed_generate(model, prompt, min(new_tokens, 16), True, top_k)  # warm-up: kernels, allocator
        timed_generate(model, prompt, min(new_tokens, 16), False, top_k)
        cached, cached_out = timed_generate(model, prompt, new_tokens, True, top_k)
        full, full_out = timed_generate(model, prompt, new_tokens, False, top_k)
    new = batch * new_tokens
    return GenerateSpeed(preset, model.num_params(), new, new / full, new / cached, torch.equal(cached_out, full_out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--presets", default="demo,small", help="comma-separated model.PRESETS names")
    parser.add_argument("--block-size", type=int, default=256, help="256: configs/train/demo.yaml")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 leaves torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; fp32")
    print("| model | block | batch | prompt + new tokens | tokens/s without cache | with cache | ratio | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = measure(preset, device, args.block_size, args.prompt_tokens, args.new_tokens, args.batch, args.top_k)
        print(f"| {preset} ({r.params / 1e6:.1f} M) | {args.block_size} | {args.batch} | {args.prompt_tokens} + "
              f"{args.new_tokens} | {r.without_cache:,.0f} | {r.with_cache:,.0f} | {r.ratio:.1f}x | "
              f"{'yes' if r.same else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
