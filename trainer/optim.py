"""The trainer's AdamW: the model's decay groups, stepped by the kernel `optim.fused` picks for the device."""

from __future__ import annotations

import torch

from narrator.trainer.config import OptimConfig
from narrator.trainer.model import GPT


def build_optimizer(model: GPT, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `model.param_groups`: one fused kernel when `cfg.fused` is true, or "auto" on CUDA;
    otherwise foreach (a few batched kernels over all tensors, not one loop step per tensor).

    Under DeepSpeed, `accelerator.prepare` wraps it; with ZeRO optimizer offload Accelerate swaps in
    DeepSpeed's CPU Adam with these param groups (it keeps AdamW's decoupled decay because this is an AdamW).
    """
    fused = device.type == "cuda" if cfg.fused == "auto" else cfg.fused
    return torch.optim.AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             fused=fused, foreach=not fused)
