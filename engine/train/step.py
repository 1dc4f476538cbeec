"""Provides one optimizer step's forward and backward: every micro-batch, gradients accumulated.

Each micro-batch seeds the global RNG (dropout, PTv3's order shuffle) from its own samples, so a
micro-batch computes the same on any process and at any split: N processes match N-step accumulation,
and OOM recovery or a resume at another split gives the same gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from engine import seeding
from engine.families.base import Task


@dataclass
class StepResult:
    loss: float
    """Mean loss over the step's micro-batches (and processes)."""
    samples: int
    tokens: int
    metrics: dict[str, float]
    seconds: float = 0.0


def forward_backward(model: nn.Module, task: Task, accelerator: Accelerator, micro_batches: list[list[int]],
                     batches: Iterator[Any], seed: int, epoch: int, rng_devices: list[torch.device],
                     before_micro_batch: Callable[[list[int]], None] | None = None) -> StepResult:
    """Runs `task.loss` and backward over one step's micro-batches; gradients sync on the last one only."""
    n = len(micro_batches)
    loss_sum = torch.zeros((), device=accelerator.device)
    samples = tokens = 0
    metrics: dict[str, float] = {}
    for i, batch in enumerate(batches):
        if before_micro_batch is not None:
            before_micro_batch(micro_batches[i])
        seeds = seeding.sample_seeds(micro_batches[i], seed, epoch)
        if isinstance(batch, dict):
            batch["sample_seeds"] = seeds
        batch = send_to_device(batch, accelerator.device)
        sync = contextlib.nullcontext() if i == n - 1 else accelerator.no_sync(model)
        with sync, torch.random.fork_rng(devices=rng_devices), accelerator.autocast():
            torch.manual_seed(seeding.combine_seeds(seeds))
            out = task.loss(model, batch)
            accelerator.backward(out.loss / n)
        loss_sum += out.loss.detach().float()
        samples += out.num_samples
        tokens += out.num_tokens
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + float(v) / n
    loss = loss_sum / n
    if accelerator.num_processes > 1:
        loss = accelerator.reduce(loss, reduction="mean")
    return StepResult(float(loss), samples, tokens, metrics)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on a GPU run; the process's resident memory on a CPU run."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(psutil.Process().memory_info().rss)
