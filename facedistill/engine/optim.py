"""Optimiser and learning-rate schedule from the recipe's ``optim`` section."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: list[int], gamma: float) -> float:
    """The multiplier of the base learning rate at ``step``: linear warm-up, then the schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    return 1.0


def build_optimizer(params: list[torch.nn.Parameter], optim: Any, total_steps: int, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD or AdamW with its per-step schedule (warm-up and milestones are given in epochs)."""
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    milestones = [int(round(m * steps_per_epoch)) for m in optim.milestones]
    if optim.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                                                           weight_decay=optim.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, optim.schedule, milestones, optim.gamma))
    return optimizer, scheduler
