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


def sample_seeds(indices: list[int], seed: int, epoch: int) -> torch.Tensor:
    """One 62-bit seed per sample from (seed, epoch, dataset index).

    Families draw per-sample noise from these (not from the global RNG), so a sample's noise does not depend
    on which process or micro-batch it lands in: 1 process x 4 accumulation steps and 4 processes x 1 then
    train on exactly the same numbers.
    """
    mask = (1 << 64) - 1
    out = []
    for index in indices:
        x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & mask
        x ^= x >> 31
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 29
        out.append(x >> 2)
    return torch.tensor(out, dtype=torch.int64)


def combine_seeds(seeds: torch.Tensor) -> int:
    """One seed for a micro-batch, from its samples' seeds (order matters: it is the batch order)."""
    mask = (1 << 63) - 1
    x = 0x243F6A8885A308D3
    for value in seeds.tolist():
        x = ((x ^ int(value)) * 0x100000001B3) & mask
    return x


def sample_generators(seeds: torch.Tensor, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """A torch.Generator per sample, seeded from `batch["sample_seeds"]`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds.tolist()]
