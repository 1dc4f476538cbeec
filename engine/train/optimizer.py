"""Provides the optimizer and learning-rate schedule: AdamW over the trainable parameters, warm-up then cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from engine.profile.schema import TrainSection


def lr_factor(warmup: int, total: int, kind: str) -> Callable[[int], float]:
    """The schedule's factor on `train.lr` at a step (0-based).

    1. linear warm-up over `warmup` steps, from 1/(warmup+1) up to 1;
    2. `constant`: 1 after warm-up; `cosine`: half a cosine from 1 down to 0 at `total`.
    """

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: nn.Module, train: TrainSection, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on the parameters that require a gradient, and its schedule over `total_steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(train.warmup_steps, total_steps, train.scheduler)
    )
    return optimizer, scheduler
