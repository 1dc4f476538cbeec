"""Provides farthest-point sampling in pure torch and TripoSG's VAE query-point selection built on it."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["farthest_point_sampling", "sample_query_indices"]


def farthest_point_sampling(
    points: torch.Tensor,  # (B, N, 3)
    num_samples: int,
    start_index: int | torch.Tensor | None = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy farthest-point sampling, batched, same result as `torch_cluster.fps` for the same start.

    Each step picks the point whose squared distance to the already chosen set is largest (the first
    such index on ties), starting from `start_index`.

    Args:
        points: (B, N, D) coordinates.
        num_samples: T <= N points to keep per batch item.
        start_index: first index per item: an int, a (B,) tensor, or None for a random start drawn
            from `generator` (TripoSG's training-mode `random_start=True`).
        generator: torch generator for the random start (CPU generator).

    Returns:
        (B, T) int64 indices into N, in selection order.
    """
    batch, n, _ = points.shape
    if not 0 < num_samples <= n:
        raise ValueError(f"num_samples: must be in [1, {n}], got {num_samples!r}.")
    device = points.device
    pts = points.float()
    if start_index is None:
        start = torch.randint(0, n, (batch,), generator=generator).to(device)
    elif isinstance(start_index, int):
        start = torch.full((batch,), start_index, dtype=torch.long, device=device)
    else:
        start = start_index.to(device=device, dtype=torch.long).reshape(batch)
    out = torch.empty(batch, num_samples, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    out[:, 0] = start
    min_dist = (pts - pts[rows, start][:, None]).pow(2).sum(-1)  # (B, N)
    for i in range(1, num_samples):
        nxt = min_dist.argmax(dim=1)  # argmax returns the first maximum, as the greedy reference does
        out[:, i] = nxt
        dist = (pts - pts[rows, nxt][:, None]).pow(2).sum(-1)
        min_dist = torch.minimum(min_dist, dist)
    return out


def sample_query_indices(
    points: torch.Tensor,  # (B, P, 3)
    num_tokens: int,
    seed: int | np.random.Generator | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose T query points among P surface points the way TripoSG's `_sample_features` does.

    1. numpy draws 4·T candidate indices (`default_rng(seed).choice`, with replacement only when
       4·T > P); the same candidates are used for every batch item.
    2. FPS keeps T of the candidates per item, starting at candidate 0, or at a random candidate
       when `random_start` (training mode).

    Source: VAST-AI-Research/TripoSG@fc5c409:triposg/models/autoencoders/autoencoder_kl_triposg.py
    (`_sample_features`, `torch_cluster.fps(ratio=1/4, random_start=self.training)`).

    Args:
        points: (B, P, 3) xyz.
        num_tokens: T.
        seed: an int or a numpy Generator makes the candidate draw reproducible; None is fresh entropy.
        random_start: random FPS start per item (from `generator`) instead of candidate 0.
        generator: torch generator for the random start.

    Returns:
        (B, T) int64 indices into P.
    """
    num_points = points.shape[1]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    num_candidates = num_tokens * 4
    candidates = rng.choice(num_points, num_candidates, replace=num_candidates > num_points)
    candidates = torch.as_tensor(candidates, dtype=torch.long, device=points.device)  # (4T,)
    picked = farthest_point_sampling(
        points[:, candidates], num_tokens, start_index=None if random_start else 0, generator=generator
    )  # (B, T)
    return candidates[picked]
