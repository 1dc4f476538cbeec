"""Provides the sample schedule: which dataset indices each process and micro-batch gets at each step.

Each optimizer step consumes `micro_batch x grad_accum x num_processes` samples from a per-epoch
permutation seeded by (seed, epoch). Halving the micro-batch and doubling accumulation (OOM recovery)
leaves every step's samples unchanged, and so does resuming at a recorded sample position; that is what
makes resume and recovery give the same weights as an uninterrupted run.
"""

from __future__ import annotations

import torch


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=gen).tolist()


def step_micro_batches(
    permutation: list[int],
    step_in_epoch: int,
    micro_batch: int,
    grad_accum: int,
    num_processes: int,
    process_index: int,
) -> list[list[int]]:
    """The micro-batches (lists of dataset indices) this process runs for one optimizer step."""
    per_process = micro_batch * grad_accum
    start = step_in_epoch * per_process * num_processes + process_index * per_process
    mine = permutation[start : start + per_process]
    return [mine[i : i + micro_batch] for i in range(0, per_process, micro_batch)]


def steps_per_epoch(num_samples: int, samples_per_step: int) -> int:
    """Complete steps in one pass (the last partial step is dropped, as with drop_last)."""
    return num_samples // samples_per_step
