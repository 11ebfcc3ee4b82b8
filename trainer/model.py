"""A GPT over audio tokens, nanoGPT style: config, attention, MLP, block, model, in reading order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

# Size presets (layers, heads, width). Parameter counts below are for the 4 x 1024 = 4096-token
# vocabulary of EnCodec at 3 kbps and block_size 2048 (12 * n_layer * n_embd^2 + embeddings).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),  # tests: ~0.4 M
    "demo": dict(n_layer=4, n_head=4, n_embd=128),  # CPU demo: ~1.3 M at block 256
    "small": dict(n_layer=6, n_head=6, n_embd=384),  # ~13 M
    "base": dict(n_layer=12, n_head=12, n_embd=768),  # ~90 M
    # ~308 M: the largest preset that trains on one 16 GB GPU with bf16 autocast + AdamW and no
    # activation checkpointing. Weights, grads and both Adam moments in fp32 take 16 bytes/param =
    # 4.6 GiB; activations (bf16 autocast, block 2048) take ~1.8 GiB per sequence, so a micro-batch
    # of 4 fits (configs/train/gpu16gb.yaml). `narrator estimate` (trainer/estimate.py) does the sums.
    "medium": dict(n_layer=24, n_head=16, n_embd=1024),
    # ~716 M (GPT-2 large): 10.7 GiB of fp32 weights, grads and moments; on one 16 GB GPU only with
    # activation checkpointing, which keeps 10 MiB per layer and sequence (block 2048) instead of 95
    # (configs/train/gpu16gb_700m.yaml).
    "large": dict(n_layer=36, n_head=20, n_embd=1280),
    # ~1.55 B (GPT-2 XL's width, 50 layers instead of 48, to pass 1.5 B): 23 GiB of training state,
    # so on a 16 GB GPU only as bf16 weights with the fp32 master weights, grads and moments in CPU
    # memory (DeepSpeed ZeRO-2 optimizer offload; configs/train/gpu16gb_1p5b_offload.yaml).
    "xl": dict(n_layer=50, n_head=25, n_embd=1600),
}


@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.1
    bias: bool = False  # biases in Linear and LayerNorm layers
    # Recompute each block's activations in backward instead of keeping them: less memory, ~1/3 more compute.
    activation_checkpointing: bool = False


class KVCache:
    """Keys and values of one attention layer for the tokens seen so far, in buffers of block_size
    positions allocated at the first append (with the keys' batch, heads, dtype and device)."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, nh, T, hs] after the cached tokens; return all keys and values so far."""
        if self.length == 0:
            B, nh, _, hs = k.shape
            self.k, self.v = k.new_empty(B, nh, self.block_size, hs), v.new_empty(B, nh, self.block_size, hs)
        end = self.length + k.size(2)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.append(k, v)
        # Query i sits at position past + i and sees keys 0..past + i; SDPA's is_causal aligns the
        # mask top-left, which is right only without cached keys, and one query sees them all.
        mask = None
        if past and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=past == 0 and T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Tied input and output embeddings: one Parameter serves both uses.
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer), one per residual add.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameters counted once each (the tied embedding is one Parameter)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position [B, T, vocab]; with targets, also the mean cross-entropy.

        With `caches` (one per layer), idx continues the cached tokens and its keys and values are added.
        """
        T = idx.size(1)
        past = caches[0].length if caches else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:  # non-reentrant: the variant that works under DDP and DeepSpeed ZeRO
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, caches[i] if caches else None)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on 2-D weights (matmuls, embeddings) only, not on norms and biases."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True, align: int = 1) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to idx [B, T], each seeing at most block_size (`context_start`).

        temperature 0 picks the most likely token; top_k keeps only the k most likely before sampling.
        With `use_cache` every layer keeps its keys and values, so a new token costs one position, not
        the whole context; both ways see the same context and draw the same samples from `generator`.
        """
        block_size = self.config.block_size
        start = context_start(idx.size(1), 0, block_size, align, keep=block_size)  # a long prompt: its last block
        caches = None
        for _ in range(max_new_tokens):
            new_start = context_start(idx.size(1), start, block_size, align)
            if not use_cache:
                logits = self(idx[:, new_start:])[0]
            elif caches is None or new_start != start:  # the first token, or the window moved: cache its tokens anew
                caches = [KVCache(block_size) for _ in self.transformer.h]
                logits = self(idx[:, new_start:], caches=caches)[0]
            else:
                logits = self(idx[:, -1:], caches=caches)[0]
            start = new_start
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_token), dim=1)
        return idx


def context_start(length: int, start: int, block_size: int, align: int = 1, keep: int | None = None) -> int:
    """Where the context of the next token begins, with `length` tokens so far and the context at `start`.

    The context grows to block_size tokens, then jumps ahead to keep only the newest `keep` (default
    block_size // 2). It cannot slide one token at a time with a cache: positions are learned absolute
    embeddings, so moving a token to another position changes its keys and values in every layer;
    after a jump the kept tokens are run again once, which every block_size - keep tokens is cheap.
    A start is a whole number of `align` tokens into the sequence, as training windows start on a unit.
    """
    if length - start <= block_size:
        return start
    keep = block_size // 2 if keep is None else keep
    if align > keep:
        raise ValueError(f"align {align} is longer than the {keep} tokens of context kept (block_size {block_size})")
    return -(-(length - keep) // align) * align  # the first aligned start that keeps at most `keep` tokens
