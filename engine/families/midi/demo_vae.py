"""Provides the MIDI family's `vae` task: the tiny VAE trained as an SDF autoencoder of synthetic primitives.

A random VAE decodes meaningless fields, so no Chamfer distance could show what a LoRA learned. MIDI's VAE
is a generic shape autoencoder, frozen during fine-tuning, so the demo's base trains the tiny one on
instances of both synthetic domains (A and B, from scene seeds that the demo's scenes never use), framed as
`prepare_dataset` frames them (one box per scene, largest half-extent 1). It is a training run like any
other (`model.task: vae`, `lora.method: full`, see `engine.families.midi.demo_base`): the model is the base
folder's VAE, the data `ShapeDataset`, the objective `VaeTask`.

Targets follow TripoSG's sign: the decoder output is positive inside and negative outside (a negated,
truncated signed distance, divided by the truncation), so marching cubes at level 0 finds the surface.
The unsigned distance of a query is the distance to the nearest of many dense surface samples; its sign
comes from that sample's outward normal.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from torch import nn

from engine.families.base import MemoryDescription, StepOutput
from engine.families.midi.latents import QUERY_SEED, encode_posterior
from engine.families.midi.memory import safetensors_numel
from engine.families.midi.synthetic import generate_synthetic_scene
from engine.families.midi.task import CHAMFER_MISSING, chamfer_distance, mesh_surface_points, unwrap
from engine.models.dit.fps import sample_query_indices
from engine.models.dit.mesh import extract_mesh
from engine.models.dit.vae import TripoSGVAEModel

__all__ = [
    "ShapeDataset",
    "ShapeSample",
    "VaeShapes",
    "VaeTask",
    "build_vae_shapes",
    "collate_shapes",
    "describe_vae_memory",
    "load_vae",
    "normalize_latent_scale",
    "reconstruction_chamfer",
    "vae_datasets",
]

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
    dist, nearest = cKDTree(dense[:, :3].numpy()).query(queries.numpy())
    dist, nearest = torch.from_numpy(dist).float(), torch.from_numpy(nearest)
    offset = queries - dense[nearest, :3]
    outside = (offset * dense[nearest, 3:]).sum(dim=1) > 0
    signed = torch.where(outside, dist, -dist)
    return (-signed).clamp(-TRUNCATION, TRUNCATION) / TRUNCATION


@functools.lru_cache(maxsize=2)  # the run's dataset and its export's rescaling use the same shapes
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


@dataclass
class ShapeSample:
    """One training instance of the `vae` task (a distinct type, so the family's collate tells it from a scene)."""

    surface: torch.Tensor  # (P, 6) the encoder's input
    tokens: torch.Tensor  # (T, 6) the encoder's query rows, chosen as the frozen encoding chooses them
    queries: torch.Tensor  # (Q, 3)
    targets: torch.Tensor  # (Q,)


class ShapeDataset(torch.utils.data.Dataset):
    """The instances of `VaeShapes`; query tokens as the frozen encoding picks them (eval-mode FPS, `QUERY_SEED`)."""

    def __init__(self, shapes: VaeShapes, num_tokens: int) -> None:
        self.shapes = shapes
        index = sample_query_indices(shapes.surfaces[..., :3], num_tokens, seed=QUERY_SEED)  # (N, T)
        self.tokens = torch.gather(shapes.surfaces, 1, index[..., None].expand(-1, -1, shapes.surfaces.shape[-1]))

    def __len__(self) -> int:
        return self.shapes.surfaces.shape[0]

    def __getitem__(self, index: int) -> ShapeSample:
        s = self.shapes
        return ShapeSample(s.surfaces[index], self.tokens[index], s.queries[index], s.targets[index])


def collate_shapes(samples: list[ShapeSample]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([getattr(x, name) for x in samples]) for name in ("surface", "tokens", "queries", "targets")}


def vae_datasets(recipe: Any) -> tuple[ShapeDataset, ShapeDataset | None]:
    """Train (and, with `data.synthetic_val_scenes`, held-out) instances of both synthetic domains.

    `data.synthetic_train_scenes` / `synthetic_val_scenes` count scenes per domain, `synthetic_num_samples`
    is the surface points per instance and `synthetic_seed` the seed (held-out scenes use another).
    """
    data, tokens = recipe.profile.data, recipe.profile.model.num_tokens
    train = ShapeDataset(build_vae_shapes(data.synthetic_train_scenes, data.synthetic_num_samples, data.synthetic_seed),
                         tokens)
    val = None
    if data.synthetic_val_scenes:
        val = ShapeDataset(build_vae_shapes(data.synthetic_val_scenes, data.synthetic_num_samples,
                                            data.synthetic_seed + 7919), tokens)
    return train, val


def load_vae(folder: Path) -> nn.Module:
    """The VAE of a pipeline folder, frozen (the trainer unfreezes it for `lora.method: full`)."""
    vae = TripoSGVAEModel.from_pretrained(str(folder / "vae"), local_files_only=True)
    return vae.requires_grad_(False).eval()


@dataclass(frozen=True)
class VaeTask:
    """The VAE as an SDF autoencoder: encode the surface, decode signed distances at random query points.

    The latent is the posterior mean plus `latent_noise` Gaussian noise, as a KL-regularised VAE samples
    it: the decoder learns a smooth latent space, so the DiT's imperfect samples still decode to compact
    shapes. A small L2 term (`mean_l2`) keeps the means near unit scale. Each step scores
    `queries_per_step` queries per instance, drawn from the pool with torch's global RNG (which the
    trainer seeds per micro-batch).
    """

    num_tokens: int
    queries_per_step: int = 1024
    latent_noise: float = 0.3
    mean_l2: float = 1e-3
    name: str = "vae"
    primary_metric: str = "val_sdf_mse"
    greater_is_better: bool = False

    def _prediction(self, model: nn.Module, batch: dict[str, Any], queries: torch.Tensor, noise: float):
        vae = unwrap(model)
        channels = vae.config.latent_channels
        params = vae.quant(vae.encoder(vae.embed_surface(batch["tokens"]), vae.embed_surface(batch["surface"])))
        mean = params[..., :channels]
        latents = mean + noise * torch.randn_like(mean) if noise else mean
        return vae.query(vae.decode_kv(latents), queries)[..., 0], mean

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        queries, targets = batch["queries"], batch["targets"]
        rows = queries.shape[0]
        cols = torch.randint(0, queries.shape[1], (rows, self.queries_per_step), device=queries.device)
        points = torch.gather(queries, 1, cols[..., None].expand(-1, -1, 3))
        pred, mean = self._prediction(model, batch, points, self.latent_noise)
        mse = torch.nn.functional.mse_loss(pred, torch.gather(targets, 1, cols))
        loss = mse + self.mean_l2 * mean.pow(2).mean()
        return StepOutput(loss=loss, metrics={"sdf_mse": mse.item()}, num_samples=rows,
                          num_tokens=rows * (self.num_tokens + self.queries_per_step))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any) -> dict[str, float]:
        """Mean squared SDF error over every pooled query, decoded from the posterior means (no noise)."""
        total, count = 0.0, 0
        for batch in batches:
            pred, _ = self._prediction(model, batch, batch["queries"], 0.0)
            total += float((pred - batch["targets"]).pow(2).sum())
            count += batch["targets"].numel()
        return {self.primary_metric: total / max(count, 1)}


def describe_vae_memory(recipe: Any) -> MemoryDescription:
    """A rough description of the `vae` task: every VAE parameter trains; activations are not modelled."""
    vae = Path(recipe.options.pretrained) / "vae"
    files = sorted(vae.glob("*.safetensors"))
    counts = [safetensors_numel(f) for f in files]
    params = int(sum(c for c in counts if c))
    task = recipe.task
    return MemoryDescription(
        frozen_params=0, lora_params=0, other_trainable_params=params,
        tokens_per_sample=task.num_tokens + task.queries_per_step,
        notes=[f"`model.task: vae`: the {params:,} parameters of {vae} train in full; activations are not modelled "
               "(the task trains the demo's tiny VAE)"],
    )


@torch.no_grad()
def normalize_latent_scale(vae: torch.nn.Module, surfaces: torch.Tensor, num_tokens: int, logvar: float = -9.0) -> float:
    """Rescales the posterior means to unit std (quant and post_quant change together: same decoded field).

    The flow-matching DiT expects latents on the scale of its unit Gaussian noise. The log-variance is
    set to the constant `logvar`, the narrow posterior of a trained, KL-regularised VAE.

    Returns:
        The std of the means before rescaling.
    """
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
    mean, _ = encode_posterior(vae, surfaces, num_tokens)
    meshes = extract_mesh(vae, mean, octree_resolution=octree_resolution)
    out = []
    for index, mesh in enumerate(meshes):
        points = mesh_surface_points(mesh, surfaces.shape[1], index)
        out.append(CHAMFER_MISSING if points is None else chamfer_distance(torch.from_numpy(points), surfaces[index, :, :3]))
    return float(np.mean(out))
