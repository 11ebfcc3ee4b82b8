"""GPU memory a training config needs, term by term, per ZeRO stage / offload choice, and what fits.

    narrator estimate --config configs/train/gpu16gb.yaml --gpu-memory 16GiB [--num-gpus N] [--json]

It also counts a training token's FLOPs (Workload.train_flops_per_token) and holds the GPUs' bf16
peaks (BF16_PEAK_TFLOPS), from which trainer/run.py logs TFLOP/s and MFU.

The model is counted from its shape, not built. What each term assumes (checked on the CPU by
tests/test_estimate.py and on an H100 by benchmarks/gpu_bench.py, see benchmarks/RESULTS.md):

- Precision. Accelerate's bf16/fp16 (DDP or one GPU) is autocast: fp32 weights, grads and AdamW
  moments (16 B/param), plus half copies of the matmul weights that autocast caches in forward and
  backward keeps. DeepSpeed's bf16/fp16 (ZeRO 1-3) casts the model: half weights and gradients
  (its grad_accum_dtype defaults to the model's), and an fp32 master copy beside the moments in the
  (partitioned or offloaded) optimizer; offloaded, the gradients are fp32 in CPU memory.
- Attention is SDPA's flash / memory-efficient kernel on the GPU: no T x T matrix is kept, only
  q, k, v, the output and a log-sum-exp per head; its dropout needs no mask. (The CPU falls back to
  the T x T math kernel when attention dropout > 0.)
- Activations per layer and token, in units of n_embd: the residual stream twice (ln_1 and ln_2
  inputs, fp32 under autocast), and in the compute dtype the c_attn input, q/k/v (3), the attention
  output, the c_fc input, the GELU input (4) and output (4), plus a 1-byte mask per dropout. With
  activation checkpointing only each block's input is kept; in backward one block at a time is
  recomputed, and it and its gradients (counted as twice its activations) replace the logits.
- Logits: B x T x vocab, as returned (fp32 under Accelerate's autocast, which converts outputs),
  the fp32 log-probabilities the loss keeps, and in backward their gradient and the logits' gradient.
- The peak is the largest of: the end of forward (autocast's weight cache is full), the start of
  backward (logits' gradients), a recomputed block (with checkpointing) and the optimizer step
  (foreach AdamW's temporary). Gradients count in the first three only with grad_accum > 1:
  otherwise zero_grad freed them, and they grow in backward as the activations are freed.
- DeepSpeed's defaults (0.19): a reduce bucket of 5e8 elements in the model's dtype on the GPU;
  ZeRO-3 on several GPUs keeps two layers gathered.
- `peak` is what torch.cuda.max_memory_allocated reports; a card also needs the CUDA context,
  cuBLAS workspaces and allocator slack: OVERHEAD_BYTES on top, and DS_ALLOCATOR_SLACK more under
  ZeRO-1/2/3, whose buffers left that much reserved but unallocated on an H100.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

import torch

from narrator.errors import ConfigError, NarratorError
from narrator.trainer.config import TrainConfig
from narrator.trainer.model import PRESETS

GiB = 2**30
DEFAULT_VOCAB = 4 * 1024 + 1  # EnCodec 3 kbps: 4 codebooks x 1024 codes, plus the boundary token
OVERHEAD_BYTES = 1 * GiB  # CUDA context (~0.5 GiB with torch 2.x), cuBLAS workspace, allocator fragmentation
DS_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size, in elements
# ZeRO-1/2/3 (not offload) left 1.9-2.5 GiB reserved beyond the allocated peak on an H100 (benchmarks/RESULTS.md).
DS_ALLOCATOR_SLACK = int(2.5 * GiB)
# Dense (no sparsity) bf16 tensor-core peak of one GPU in TFLOP/s, from the vendors' datasheets: MFU's denominator.
# Matched against torch.cuda.get_device_name(), longest name first ("H100 PCIe" before "H100", "L40S" before "L4").
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'16GiB' -> 17179869184, '16GB' -> 16e9, '80 GiB', '1.5TB'; a unit is required."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise NarratorError(f"--gpu-memory {text!r}: expected a size with a unit, like 16GiB, 16GB or 80GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Recipe:
    """A way to spread training state over GPUs: DDP, a ZeRO stage, optimizer state offloaded to the CPU."""

    name: str
    zero_stage: int  # 0: plain DDP / one GPU under Accelerate
    offload_optimizer: bool
    launch: str  # the accelerate config that selects it


RECIPES = (
    Recipe("ddp", 0, False, "launch/accelerate/single_gpu.yaml or multi_gpu.yaml"),
    Recipe("zero1", 1, False, "launch/accelerate/deepspeed_zero2.yaml with zero_stage: 1"),
    Recipe("zero2", 2, False, "launch/accelerate/deepspeed_zero2.yaml"),
    Recipe("zero2-offload", 2, True, "launch/accelerate/deepspeed_zero2_offload.yaml"),
    Recipe("zero3", 3, False, "launch/accelerate/deepspeed_zero3.yaml"),
)


@dataclass(frozen=True)
class Workload:
    """What one training process holds: the GPT's shape, its micro-batch and how it is trained."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    block_size: int
    batch_size: int  # sequences per GPU per micro-step
    grad_accum: int = 1
    mixed_precision: str = "bf16"  # "no", "bf16", "fp16"
    activation_checkpointing: bool = False
    dropout: float = 0.1
    bias: bool = False
    fused_adamw: bool = True  # False: foreach, which needs a temporary the size of the second moments
    num_gpus: int = 1

    @property
    def params(self) -> int:
        """Parameters, the tied embedding once: the same count as GPT.num_params()."""
        d, L = self.n_embd, self.n_layer
        per_layer = 12 * d * d + 2 * d + (11 * d if self.bias else 0)  # 4 matmuls, 2 LayerNorms (+ biases)
        return self.vocab_size * d + self.block_size * d + L * per_layer + d * (2 if self.bias else 1)

    @property
    def train_flops_per_token(self) -> int:
        """FLOPs of one training token, nanoGPT's estimate_mfu (PaLM appendix B): 6 N for the weights
        (forward 2 N, backward 4 N; the tied embedding counted once, as in `params`) plus 12 L d T for
        attention's scores and weighted sum at block size T. With activation checkpointing the
        recomputed forward (2 N more) is not counted: MFU counts the model's FLOPs, not the hardware's."""
        return 6 * self.params + 12 * self.n_layer * self.n_embd * self.block_size

    @property
    def matmul_params(self) -> int:
        """Weights used in matmuls (the blocks' Linears and the tied lm_head): what autocast casts."""
        return 12 * self.n_layer * self.n_embd**2 + self.vocab_size * self.n_embd

    def precision(self, recipe: Recipe) -> str:
        """'fp32', 'autocast' (fp32 weights, half compute: Accelerate) or 'half' (half weights: DeepSpeed)."""
        if self.mixed_precision == "no":
            return "fp32"
        return "autocast" if recipe.zero_stage == 0 else "half"


def layer_bytes(w: Workload, precision: str) -> int:
    """Bytes one block keeps for backward (see the module docstring)."""
    residual = 4 if precision in ("fp32", "autocast") else 2
    compute = 4 if precision == "fp32" else 2
    masks = 2 if w.dropout > 0 else 0
    return w.batch_size * w.block_size * (w.n_embd * (2 * residual + 14 * compute + masks) + 4 * w.n_head)  # + log-sum-exp


def activation_bytes(w: Workload, precision: str, checkpointing: bool | None = None) -> int:
    """Bytes autograd keeps from one forward for backward, without weights and logits.

    With checkpointing, only each block's input (the block recomputed in backward is counted by estimate_memory).
    """
    checkpointing = w.activation_checkpointing if checkpointing is None else checkpointing
    residual = 4 if precision in ("fp32", "autocast") else 2
    compute = 4 if precision == "fp32" else 2
    tokens = w.batch_size * w.block_size
    ends = tokens * (w.n_embd * (residual + compute + (1 if w.dropout > 0 else 0)) + 16)  # ln_f/lm_head inputs, ids
    if checkpointing:
        return w.n_layer * tokens * w.n_embd * residual + ends
    return w.n_layer * layer_bytes(w, precision) + ends


def logits_bytes(w: Workload, precision: str, moment: str = "backward") -> int:
    """Logits and loss memory at the end of forward or the start of backward (see the module docstring)."""
    returned = {"fp32": 4, "autocast": 4, "half": 2}[precision]  # what the caller holds
    if moment == "forward":  # half logits being made, an fp32 copy for the loss, log-probs
        per = {"fp32": 8, "autocast": 10, "half": 10}[precision]
    else:  # returned logits, log-probs, their gradient, the logits' gradient (fp32)
        per = returned + 12
    return w.batch_size * w.block_size * w.vocab_size * per


@dataclass
class MemoryEstimate:
    """Bytes on one GPU at its peak moment, by term; `peak` is what max_memory_allocated would show."""

    recipe: str
    precision: str
    moment: str  # "forward end", "backward start", "block backward" (checkpointing) or "optimizer step"
    weights: int
    gradients: int
    optimizer: int  # AdamW moments, plus the fp32 master weights where the model is half
    weight_copies: int  # half casts of the weights that autocast keeps for backward
    buckets: int  # DDP gradient buckets / DeepSpeed reduce bucket
    activations: int
    logits: int
    overhead: int
    host: int  # CPU memory for offloaded optimizer state and gradients

    @property
    def peak(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.weight_copies + self.buckets
                + self.activations + self.logits)

    @property
    def total(self) -> int:
        return self.peak + self.overhead


def estimate_memory(w: Workload, recipe: Recipe) -> MemoryEstimate:
    """The peak of one training step of `w` under `recipe`, per GPU."""
    n, world, p = w.params, w.num_gpus, w.precision(recipe)
    weight_bytes = 2 if p == "half" else 4
    master = 4 * n // world if p == "half" else 0
    moments = 8 * n if recipe.zero_stage == 0 else 8 * n // world
    host = 0
    if recipe.zero_stage == 0:
        weights, grads, opt = 4 * n, 4 * n, moments
        buckets = 4 * n if world > 1 else 0  # DDP's flat gradient buckets beside param.grad
    else:
        weights = weight_bytes * n if recipe.zero_stage < 3 else weight_bytes * n // world
        if recipe.zero_stage == 3 and world > 1:  # the layer in use and the one prefetched
            weights += 2 * weight_bytes * 12 * w.n_embd**2
        # Gradients accumulate in the model's dtype (DeepSpeed's grad_accum_dtype default), whole under ZeRO-1.
        grads = weight_bytes * n if recipe.zero_stage == 1 else weight_bytes * n // world
        opt = master + moments
        buckets = DS_REDUCE_BUCKET * weight_bytes
        if recipe.offload_optimizer:  # fp32 gradients, master weights and moments in CPU memory
            host, grads, opt = 4 * n // world + master + moments, 0, 0
    held_grads = grads if w.grad_accum > 1 else 0
    static = weights + opt + buckets
    acts = activation_bytes(w, p)
    cache = 2 * w.matmul_params if p == "autocast" else 0
    lm_head_copy = 2 * w.vocab_size * w.n_embd if p == "autocast" else 0
    foreach_temp = 0 if w.fused_adamw or recipe.offload_optimizer else 4 * n if recipe.zero_stage == 0 else 4 * n // world
    moments_at = {  # (gradients, weight copies, activations, logits) at each candidate peak
        "forward end": (held_grads, cache, acts, logits_bytes(w, p, "forward")),
        # With checkpointing the blocks' casts were dropped with their activations; lm_head's stays.
        "backward start": (held_grads, lm_head_copy if w.activation_checkpointing else cache, acts,
                           logits_bytes(w, p, "backward")),
        "optimizer step": (grads, 0, 0, foreach_temp),
    }
    if w.activation_checkpointing:  # the logits are gone when a block is recomputed: it, its casts and gradients
        moments_at["block backward"] = (held_grads, lm_head_copy + (2 * 12 * w.n_embd**2 if cache else 0),
                                        acts + 2 * layer_bytes(w, p), 0)
    moment, (g, copies, a, lg) = max(moments_at.items(), key=lambda kv: static + sum(kv[1]))
    if moment == "optimizer step":  # foreach AdamW's temporary is reported with the optimizer state
        opt, lg = opt + lg, 0
    overhead = OVERHEAD_BYTES + (DS_ALLOCATOR_SLACK if recipe.zero_stage and not recipe.offload_optimizer else 0)
    return MemoryEstimate(recipe.name, p, moment, weights, g, opt, copies, buckets, a, lg, overhead, host)


def workload_from_config(cfg: TrainConfig, num_gpus: int = 1) -> Workload:
    """The Workload a training config describes (vocab: model.vocab_size, else DEFAULT_VOCAB)."""
    vocab = cfg.model.vocab_size or DEFAULT_VOCAB
    gpt = cfg.model.gpt_config(vocab)
    return Workload(n_layer=gpt.n_layer, n_head=gpt.n_head, n_embd=gpt.n_embd, vocab_size=vocab,
                    block_size=gpt.block_size, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                    mixed_precision=cfg.mixed_precision,
                    activation_checkpointing=cfg.model.activation_checkpointing, dropout=gpt.dropout, bias=gpt.bias,
                    fused_adamw=cfg.optim.fused is not False, num_gpus=num_gpus)  # auto: fused on CUDA


def fits(w: Workload, recipe: Recipe, gpu_memory: int) -> bool:
    return estimate_memory(w, recipe).total <= gpu_memory


def largest_preset(w: Workload, recipe: Recipe, gpu_memory: int) -> str | None:
    """The biggest model.PRESETS entry that fits at micro-batch 1 with w's block size and checkpointing."""
    best = None
    for name, sizes in sorted(PRESETS.items(), key=lambda kv: dataclasses.replace(w, **kv[1]).params):
        if fits(dataclasses.replace(w, batch_size=1, **sizes), recipe, gpu_memory):
            best = name
    return best


def largest_batch(w: Workload, recipe: Recipe, gpu_memory: int, limit: int = 4096) -> int:
    """The largest micro-batch that fits (0: not even one sequence)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(dataclasses.replace(w, batch_size=mid), recipe, gpu_memory) else (lo, mid - 1)
    return lo


def largest_block(w: Workload, recipe: Recipe, gpu_memory: int, step: int = 256, limit: int = 1 << 20) -> int:
    """The largest block size, a multiple of `step`, that fits at w's micro-batch (0: none)."""
    lo, hi = 0, limit // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(dataclasses.replace(w, block_size=mid * step), recipe, gpu_memory) else (lo, mid - 1)
    return lo * step


@dataclass
class Report:
    """`narrator estimate`'s answer for one config: every recipe's estimate and what fits."""

    config: str
    preset: str
    workload: Workload
    gpu_memory: int
    estimates: list[MemoryEstimate]
    largest_preset: dict[str, str | None]
    largest_batch: dict[str, int]
    largest_block: dict[str, int]
    vocab_assumed: bool

    def to_json(self) -> str:
        w = self.workload
        return json.dumps({
            "config": self.config, "preset": self.preset, "params": w.params, "workload": dataclasses.asdict(w),
            "gpu_memory_bytes": self.gpu_memory, "overhead_bytes": OVERHEAD_BYTES,
            "recipes": {e.recipe: {**dataclasses.asdict(e), "peak": e.peak, "total": e.total,
                                   "fits": e.total <= self.gpu_memory,
                                   "largest_preset_at_batch_1": self.largest_preset[e.recipe],
                                   "largest_micro_batch": self.largest_batch[e.recipe],
                                   "largest_block_size": self.largest_block[e.recipe]} for e in self.estimates},
        }, indent=1)

    def table(self) -> str:
        w, gib = self.workload, lambda b: f"{b / GiB:.2f}"
        names = [e.recipe for e in self.estimates]
        rows = [("weights", [gib(e.weights) for e in self.estimates]),
                ("gradients", [gib(e.gradients) for e in self.estimates]),
                ("optimizer state", [gib(e.optimizer) for e in self.estimates]),
                ("autocast weight copies", [gib(e.weight_copies) for e in self.estimates]),
                ("gradient buckets", [gib(e.buckets) for e in self.estimates]),
                ("activations", [gib(e.activations) for e in self.estimates]),
                ("logits + loss", [gib(e.logits) for e in self.estimates]),
                ("peak (max_memory_allocated)", [gib(e.peak) for e in self.estimates]),
                ("+ overhead = total", [gib(e.total) for e in self.estimates]),
                (f"fits {gib(self.gpu_memory)} GiB", ["yes" if e.total <= self.gpu_memory else "NO" for e in self.estimates]),
                ("precision", [e.precision for e in self.estimates]),
                ("peak at", [e.moment for e in self.estimates]),
                ("CPU memory (offload)", [gib(e.host) for e in self.estimates]),
                ("largest preset, micro-batch 1", [self.largest_preset[n] or "none" for n in names]),
                (f"largest micro-batch, block {w.block_size}", [str(self.largest_batch[n]) for n in names]),
                (f"largest block, micro-batch {w.batch_size}", [str(self.largest_block[n]) for n in names])]
        width = max(len(r[0]) for r in rows)
        cols = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]

        def fmt(label: str, cells: list[str]) -> str:
            return "  ".join([label.ljust(width), *(c.rjust(cols[i]) for i, c in enumerate(cells))])

        vocab = f"vocab {w.vocab_size}" + (" (assumed: 4 codebooks x 1024 + boundary; set model.vocab_size for others)"
                                           if self.vocab_assumed else "")
        lines = [(f"{self.config}: {self.preset} preset ({w.n_layer} layers x {w.n_embd}, {w.n_head} heads), "
                  f"{w.params / 1e6:,.1f} M parameters, {vocab}"),
                 (f"block {w.block_size}, micro-batch {w.batch_size} x grad_accum {w.grad_accum}, mixed_precision "
                  f"{w.mixed_precision}, activation checkpointing {'on' if w.activation_checkpointing else 'off'}, "
                  f"{'fused' if w.fused_adamw else 'foreach'} AdamW, {w.num_gpus} GPU(s); GiB per GPU:"),
                 "", fmt("", names), *(fmt(label, cells) for label, cells in rows), "",
                 (f"overhead: {OVERHEAD_BYTES / GiB:g} GiB for the CUDA context, cuBLAS workspace and allocator slack "
                  f"(+{DS_ALLOCATOR_SLACK / GiB:g} GiB under ZeRO-1/2/3); flash/memory-efficient attention (no T x T "
                  "matrix); assumptions: trainer/estimate.py")]
        return "\n".join(lines)


def estimate_config(cfg: TrainConfig, gpu_memory: int, num_gpus: int = 1, config_name: str = "config") -> Report:
    if num_gpus < 1:
        raise NarratorError(f"--num-gpus {num_gpus}: must be >= 1")
    w = workload_from_config(cfg, num_gpus)
    return Report(config_name, cfg.model.preset, w, gpu_memory, [estimate_memory(w, r) for r in RECIPES],
                  {r.name: largest_preset(w, r, gpu_memory) for r in RECIPES},
                  {r.name: largest_batch(w, r, gpu_memory) for r in RECIPES},
                  {r.name: largest_block(w, r, gpu_memory) for r in RECIPES},
                  vocab_assumed=cfg.model.vocab_size is None)


def load_train_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """A training config for estimating: data.manifest is not needed, so it may be missing."""
    from narrator.config import load_config

    try:
        return load_config(TrainConfig, path, overrides)
    except ConfigError as e:
        if "'data.manifest' is required" not in str(e):
            raise
    return load_config(TrainConfig, path, ["data.manifest=(not needed to estimate)", *overrides])


def run_estimate(path: str | None, overrides: list[str], gpu_memory: str, num_gpus: int = 1, as_json: bool = False) -> str:
    """`narrator estimate`: the table (or JSON) for a config file and its overrides."""
    size = parse_size(gpu_memory)
    report = estimate_config(load_train_config(path, overrides), size, num_gpus, config_name=path or "defaults")
    return report.to_json() if as_json else report.table()


def peak_tflops(device: str | torch.device) -> float | None:
    """The dense bf16 peak of `device`; None off CUDA or for a GPU not listed (MFU unknown)."""
    device = torch.device(device)
    return bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def bf16_peak(gpu_name: str) -> float | None:
    """BF16_PEAK_TFLOPS of a GPU named as torch.cuda.get_device_name says ("NVIDIA H100 80GB HBM3"), or None."""
    return next((BF16_PEAK_TFLOPS[k] for k in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True) if k in gpu_name), None)
