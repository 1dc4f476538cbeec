"""Provides the step stream: this process's micro-batches, step after step, through one DataLoader per epoch.

One loader per epoch (not per step) lets `data.num_workers` prefetch across steps. The stream is keyed by
(epoch, micro-batch split): when either changes (a new epoch, OOM recovery, a resume) the trainer drops
the stream and opens a new one at the right step, and the sample schedule (`engine.train.batching`)
guarantees the same samples per step whatever the split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from engine.train import batching
from engine.train.state import TrainState


def make_loader(dataset: Any, batches: list[list[int]], collate: Callable[[list[Any]], Any],
                num_workers: int) -> torch.utils.data.DataLoader:
    """A loader that yields exactly `batches` (lists of dataset indices), in order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


class StepStream:
    """This process's micro-batches from one step to the end of an epoch."""

    def __init__(self, dataset: Any, state: TrainState, seed: int, steps_per_epoch: int, num_processes: int,
                 process_index: int, collate: Callable[[list[Any]], Any], num_workers: int) -> None:
        self.key = (state.epoch, state.micro_batch, state.grad_accum)
        self.next_step = state.epoch_sample // state.samples_per_step(num_processes)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(state.epoch)
        perm = batching.epoch_permutation(len(dataset), seed, state.epoch)
        self.schedule = [
            batching.step_micro_batches(perm, s, state.micro_batch, state.grad_accum, num_processes, process_index)
            for s in range(self.next_step, steps_per_epoch)
        ]
        flat = [mb for step in self.schedule for mb in step]
        self._batches = iter(make_loader(dataset, flat, collate, num_workers))

    def serves(self, state: TrainState, num_processes: int) -> bool:
        """Whether this stream's next step is the state's next step at the state's split."""
        step_in_epoch = state.epoch_sample // state.samples_per_step(num_processes)
        return self.key == (state.epoch, state.micro_batch, state.grad_accum) and self.next_step == step_in_epoch

    def take(self) -> tuple[list[list[int]], Iterator[Any]]:
        """The next step's micro-batch indices and a lazy iterator over their collated batches."""
        micro_batches = self.schedule.pop(0)
        self.next_step += 1
        return micro_batches, (next(self._batches) for _ in micro_batches)
