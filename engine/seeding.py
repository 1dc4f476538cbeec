"""Provides per-sample seeds: randomness that follows the data, not the process or micro-batch it lands in.

A sample's seed is a function of (train seed, epoch, dataset index). Families draw per-sample noise from
generators seeded with it, and the trainer seeds each micro-batch's global RNG from its samples' seeds, so
1 process x N accumulation steps, N processes, a resume and an out-of-memory retry train on the same numbers.
"""

from __future__ import annotations

import torch


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
