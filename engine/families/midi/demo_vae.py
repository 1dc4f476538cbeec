"""Provides the demo's tiny VAE pretraining: an SDF autoencoder of the synthetic primitives, trained in about a minute.

A random VAE decodes meaningless fields, so no Chamfer distance could show what a LoRA learned. MIDI's VAE
is a generic shape autoencoder, frozen during fine-tuning, so the demo trains the tiny one on instances of
both synthetic domains (A and B, from scene seeds that the demo's scenes never use), framed as
`prepare_dataset` frames them (one box per scene, largest half-extent 1).

Targets follow TripoSG's sign: the decoder output is positive inside and negative outside (a negated,
truncated signed distance, divided by the truncation), so marching cubes at level 0 finds the surface.
The unsigned distance of a query is the distance to the nearest of many dense surface samples; its sign
comes from that sample's outward normal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

__all__ = ["VaeShapes", "build_vae_shapes", "fit_demo_vae", "normalize_latent_scale", "reconstruction_chamfer"]

TRUNCATION = 0.1
"""Signed distances are clamped to +-TRUNCATION (normalised units) and divided by it."""
_DENSE_POINTS = 4096
_QUERY_POOL = 6144
_SCENE_SEED_OFFSET = 50_000_000  # far from the demo's scene seeds (seed * 100_003 + index)


@dataclass
class VaeShapes:
    """Training instances: encoder inputs, and a pool of query points with their targets."""

    surfaces: torch.Tensor  # (N, P, 6) xyz + normals in the scene frame
    queries: torch.Tensor  # (N, Q, 3)
    targets: torch.Tensor  # (N, Q) truncated, negated signed distance / TRUNCATION, in [-1, 1]


def _scene_instances(seed: int, domain: str) -> list[trimesh.Trimesh]:
    """One synthetic scene's meshes, normalised like `prepare_dataset` (joint box centred, half-extent 1)."""
    from engine.families.midi.synthetic import generate_synthetic_scene

    meshes = generate_synthetic_scene(seed, domain).meshes
    lo = np.min([m.vertices.min(axis=0) for m in meshes], axis=0)
    hi = np.max([m.vertices.max(axis=0) for m in meshes], axis=0)
    center, scale = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0
    out = []
    for mesh in meshes:
        mesh = mesh.copy()
        mesh.apply_translation(-center)
        mesh.apply_scale(1.0 / scale)
        out.append(mesh)
    return out


def _sample(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> torch.Tensor:  # (count, 6)
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=rng)
    return torch.from_numpy(np.concatenate([points, mesh.face_normals[faces]], axis=1).astype(np.float32))


def _targets(queries: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:  # (Q, 3), (D, 6) -> (Q,)
    """Negated truncated signed distance / TRUNCATION: +1 deep inside, -1 far outside, 0 on the surface."""
    from scipy.spatial import cKDTree

    dist, nearest = cKDTree(dense[:, :3].numpy()).query(queries.numpy())
    dist, nearest = torch.from_numpy(dist).float(), torch.from_numpy(nearest)
    offset = queries - dense[nearest, :3]
    outside = (offset * dense[nearest, 3:]).sum(dim=1) > 0
    signed = torch.where(outside, dist, -dist)
    return (-signed).clamp(-TRUNCATION, TRUNCATION) / TRUNCATION


def build_vae_shapes(scenes_per_domain: int, num_points: int, seed: int, domains: tuple[str, ...] = ("A", "B")) -> VaeShapes:
    """Instances of `scenes_per_domain` synthetic scenes per domain, with surfaces and a query pool each.

    Queries: half near the surface (dense samples plus Gaussian noise of std 0.02 or 0.06), half uniform
    in the [-1.05, 1.05]^3 box the mesh extraction scans.
    """
    rng = np.random.default_rng([seed, 17])
    gen = torch.Generator().manual_seed(seed)
    surfaces, queries, targets = [], [], []
    for domain in domains:
        for index in range(scenes_per_domain):
            for mesh in _scene_instances(_SCENE_SEED_OFFSET + seed * 10_007 + index, domain):
                surfaces.append(_sample(mesh, num_points, rng))
                dense = _sample(mesh, _DENSE_POINTS, rng)
                near_count = _QUERY_POOL // 2
                pick = torch.randint(0, _DENSE_POINTS, (near_count,), generator=gen)
                sigma = torch.where(torch.rand(near_count, 1, generator=gen) < 0.5, 0.02, 0.06)
                near = dense[pick, :3] + sigma * torch.randn(near_count, 3, generator=gen)
                far = (torch.rand(_QUERY_POOL - near_count, 3, generator=gen) * 2 - 1) * 1.05
                q = torch.cat([near, far])
                queries.append(q)
                targets.append(_targets(q, dense))
    return VaeShapes(torch.stack(surfaces), torch.stack(queries), torch.stack(targets))


def fit_demo_vae(
    vae: torch.nn.Module,
    shapes: VaeShapes,
    num_tokens: int,
    steps: int,
    seed: int = 0,
    batch_size: int = 16,
    queries_per_step: int = 1024,
    lr: float = 3e-3,
    latent_noise: float = 0.3,
    log: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains `vae` (a `TripoSGVAEModel`) in place to reconstruct `shapes`; returns the loss per step.

    The latent is the posterior mean plus `latent_noise` Gaussian noise, as a KL-regularised VAE samples
    it: the decoder learns a smooth latent space, so the DiT's imperfect samples still decode to compact
    shapes. A small L2 term keeps the means near unit scale.
    Query tokens are chosen as the frozen encoding chooses them (eval-mode FPS, seed 0).
    """
    from engine.families.midi.latents import QUERY_SEED

    count = shapes.surfaces.shape[0]
    with torch.no_grad():
        vae.eval()
        token_index = vae.select_queries(shapes.surfaces, num_tokens, seed=QUERY_SEED)  # (N, T, 6)
    vae.train().requires_grad_(True)
    channels = vae.config.latent_channels
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        rows = torch.randperm(count, generator=gen)[:batch_size]
        cols = torch.randint(0, shapes.queries.shape[1], (len(rows), queries_per_step), generator=gen)
        surface = shapes.surfaces[rows]
        x_q = vae.embed_surface(token_index[rows])
        params = vae.quant(vae.encoder(x_q, vae.embed_surface(surface)))
        mean = params[..., :channels]
        latents = mean + latent_noise * torch.randn(mean.shape, generator=gen)
        points = torch.gather(shapes.queries[rows], 1, cols[..., None].expand(-1, -1, 3))
        target = torch.gather(shapes.targets[rows], 1, cols)
        pred = vae.query(vae.decode_kv(latents), points)[..., 0]
        loss = torch.nn.functional.mse_loss(pred, target) + 1e-3 * mean.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log is not None:
            log(step, losses[-1])
    vae.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def normalize_latent_scale(vae: torch.nn.Module, surfaces: torch.Tensor, num_tokens: int, logvar: float = -9.0) -> float:
    """Rescales the posterior means to unit std (quant and post_quant change together: same decoded field).

    The flow-matching DiT expects latents on the scale of its unit Gaussian noise. The log-variance is
    set to the constant `logvar`, the narrow posterior of a trained, KL-regularised VAE.

    Returns:
        The std of the means before rescaling.
    """
    from engine.families.midi.latents import encode_posterior

    channels = vae.config.latent_channels
    mean, _ = encode_posterior(vae, surfaces, num_tokens)
    std = float(mean.std())
    vae.quant.weight[:channels] /= std
    vae.quant.bias[:channels] /= std
    vae.post_quant.weight *= std
    vae.quant.weight[channels:].zero_()
    vae.quant.bias[channels:].fill_(logvar)
    return std


@torch.no_grad()
def reconstruction_chamfer(vae: torch.nn.Module, surfaces: torch.Tensor, num_tokens: int, octree_resolution: int) -> float:
    """Mean Chamfer distance between `surfaces` (N, P, 6) and the meshes decoded from their posterior means."""
    from engine.families.midi.latents import encode_posterior
    from engine.families.midi.task import CHAMFER_MISSING, chamfer_distance, mesh_surface_points
    from engine.models.dit.mesh import extract_mesh

    mean, _ = encode_posterior(vae, surfaces, num_tokens)
    meshes = extract_mesh(vae, mean, octree_resolution=octree_resolution)
    out = []
    for index, mesh in enumerate(meshes):
        points = mesh_surface_points(mesh, surfaces.shape[1], index)
        out.append(CHAMFER_MISSING if points is None else chamfer_distance(torch.from_numpy(points), surfaces[index, :, :3]))
    return float(np.mean(out))


def _main() -> None:  # a measurement aid: python -m engine.families.midi.demo_vae
    from engine.models.dit.vae import TripoSGVAEModel

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    shapes = build_vae_shapes(24, 1024, 0)
    held = build_vae_shapes(3, 1024, 99, domains=("B",))
    print(f"shapes {shapes.surfaces.shape[0]} in {time.perf_counter() - t0:.1f}s")
    torch.manual_seed(0)
    vae = TripoSGVAEModel(latent_channels=8, num_attention_heads=2, width_encoder=32, width_decoder=32,
                          num_layers_encoder=1, num_layers_decoder=2)
    print("random recon chamfer", reconstruction_chamfer(vae, held.surfaces, 32, 32))
    t0 = time.perf_counter()
    fit_demo_vae(vae, shapes, 32, 800, log=lambda s, v: print(s, f"{v:.4f}") if s % 100 == 0 else None)
    print(f"trained in {time.perf_counter() - t0:.1f}s")
    print("std", normalize_latent_scale(vae, shapes.surfaces, 32))
    print("held-out B recon chamfer", reconstruction_chamfer(vae, held.surfaces, 32, 32))


if __name__ == "__main__":
    _main()
