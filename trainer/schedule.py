"""Learning-rate schedules as a pure function of the optimizer step, plus the torch LambdaLR that applies it."""

from __future__ import annotations

import math

import torch

from narrator.trainer.config import ScheduleConfig


def lr_at(step: int, cfg: ScheduleConfig, base_lr: float, max_steps: int) -> float:
    """Learning rate for the update that follows `step` completed updates (step 0 is the first update).

    Linear warmup reaches base_lr at step warmup_steps - 1 (the first update is not wasted at lr 0);
    "cosine" then decays to min_lr_ratio * base_lr at max_steps, "constant" stays at base_lr.
    """
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return base_lr
    min_lr = cfg.min_lr_ratio * base_lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, base_lr: float, max_steps: int,
                    start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following lr_at, positioned at `start_step` (it sets the optimizer's lr for that step).

    A resumed run rebuilds its schedule at the restored step instead of loading a saved one: the
    schedule is a function of the step and this run's config, so lr or max_steps may change on resume.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = base_lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg, base_lr, max_steps) / base_lr,
                                             last_epoch=start_step - 1)
