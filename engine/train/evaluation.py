"""Provides evaluation during training and best-metric tracking.

Evaluation runs the task's `evaluate` over the validation split in eval mode, on its own RNG fork, so a
run with evaluation trains exactly as one without. The best value of the task's primary metric and its
step live in `TrainState` (so a resume keeps them); an improvement writes `adapter-best/`.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import send_to_device
from torch import nn

from engine.families.base import Task
from engine.train.state import TrainState
from engine.train.stream import make_loader


def evaluate(model: nn.Module, task: Task, dataset: Any, micro_batch: int, accelerator: Any,
             collate: Any, num_workers: int) -> dict[str, float]:
    """The task's metrics over `dataset` (empty when there is no validation data)."""
    if dataset is None or len(dataset) == 0:
        return {}
    indices = list(range(len(dataset)))
    batches = [indices[i : i + micro_batch] for i in range(0, len(indices), micro_batch)]
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    loader = make_loader(dataset, batches, collate, num_workers)
    was_training = model.training
    model.eval()
    # Evaluation must not move the training RNG, or runs with and without eval would differ.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), accelerator.autocast():
        metrics = task.evaluate(model, (send_to_device(b, accelerator.device) for b in loader))
    model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def eval_due(state: TrainState, every: int | None, total_steps: int) -> bool:
    """On `train.eval_every` steps, and once at the end when the last step was not one of them."""
    if every is not None and state.step % every == 0:
        return True
    return state.step == total_steps


def record_best(state: TrainState, task: Task, metrics: dict[str, float]) -> bool:
    """Updates the state's best metric and step; returns whether this evaluation improved on it."""
    primary = metrics.get(task.primary_metric)
    best = state.best_metric
    improved = primary is not None and (best is None or (primary > best if task.greater_is_better else primary < best))
    if improved:
        state.best_metric, state.best_step = primary, state.step
    return improved
