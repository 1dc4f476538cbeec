"""FPS against a brute-force greedy reference, and TripoSG-style query selection in the VAE encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models.dit.fps import farthest_point_sampling, sample_query_indices
from engine.models.dit.vae import TripoSGVAEModel


def _greedy_fps(points: np.ndarray, num_samples: int, start: int) -> list[int]:
    """O(N*T) textbook greedy FPS on one cloud (float64)."""
    chosen = [start]
    for _ in range(num_samples - 1):
        best, best_d = -1, -1.0
        for j in range(len(points)):
            d = min(float(((points[j] - points[c]) ** 2).sum()) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


@pytest.mark.parametrize(("n", "t", "start"), [(60, 12, 0), (80, 20, 7), (33, 33, 5)])
def test_fps_matches_greedy_reference(n, t, start):
    rng = np.random.default_rng(n + t)
    clouds = rng.normal(size=(3, n, 3))
    got = farthest_point_sampling(torch.from_numpy(clouds).float(), t, start_index=start)
    for b in range(3):
        ref = _greedy_fps(clouds[b].astype(np.float32).astype(np.float64), t, start)
        assert got[b].tolist() == ref


def test_fps_per_item_start_and_unique():
    pts = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    idx = farthest_point_sampling(pts, 50, start_index=torch.tensor([3, 9]))
    assert idx[:, 0].tolist() == [3, 9]
    assert all(len(set(row.tolist())) == 50 for row in idx)


def test_fps_random_start_follows_generator():
    pts = torch.randn(4, 40, 3, generator=torch.Generator().manual_seed(1))
    a = farthest_point_sampling(pts, 8, start_index=None, generator=torch.Generator().manual_seed(3))
    b = farthest_point_sampling(pts, 8, start_index=None, generator=torch.Generator().manual_seed(3))
    c = farthest_point_sampling(pts, 8, start_index=None, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 0], c[:, 0])


def test_fps_rejects_too_many_samples():
    with pytest.raises(ValueError, match="num_samples"):
        farthest_point_sampling(torch.zeros(1, 4, 3), 5)


def test_query_indices_follow_triposg_procedure():
    pts = torch.randn(2, 500, 3, generator=torch.Generator().manual_seed(2))
    idx = sample_query_indices(pts, 16, seed=123)
    candidates = np.random.default_rng(123).choice(500, 64, replace=False)
    ref = farthest_point_sampling(pts[:, torch.from_numpy(candidates)], 16, start_index=0)
    assert idx.shape == (2, 16)
    assert torch.equal(idx, torch.from_numpy(candidates)[ref])
    assert torch.equal(idx, sample_query_indices(pts, 16, seed=123))
    assert not torch.equal(idx, sample_query_indices(pts, 16, seed=124))


def test_query_indices_with_replacement_when_cloud_is_small():
    pts = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(2))
    idx = sample_query_indices(pts, 8, seed=0)  # 32 candidates out of 10 points
    assert idx.shape == (1, 8) and int(idx.max()) < 10


def test_vae_encode_uses_fps_queries():
    torch.manual_seed(0)
    vae = TripoSGVAEModel(latent_channels=4, num_attention_heads=2, width_encoder=16, width_decoder=16,
                          num_layers_encoder=1, num_layers_decoder=1).eval()
    surface = torch.randn(2, 200, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        auto = vae.encode(surface, num_tokens=8, seed=11).latent_dist
        idx = sample_query_indices(surface[..., :3], 8, seed=11)
        fixed = vae.encode(surface, num_tokens=8, query_indices=idx).latent_dist
    assert auto.mean.shape == (2, 8, 4)
    torch.testing.assert_close(auto.parameters, fixed.parameters, rtol=0, atol=0)
