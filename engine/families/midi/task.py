"""Provides MIDI's training objective and evaluation: rectified-flow matching, validation loss, Chamfer distance.

Training (TripoSG's sign, engine/models/dit/flow.py): x0 ~ the frozen VAE posterior, sigma ~ logit-normal
(one per scene, as all instances of a scene share the timestep at inference), x_sigma = (1 - sigma) x0 +
sigma noise, target x0 - noise, MSE averaged over the real instances only. Both image conditions of a
scene are replaced by zeros with probability `cfg_dropout` (the unconditional branch of CFG).
Random draws use torch's global RNG in a fixed order: posterior eps, sigmas, CFG drop, noise.

Evaluation: the same loss at a fixed grid of sigmas with noise from a fixed generator (no dropout), and
optionally a few scenes generated with CFG, meshed and compared by Chamfer distance to the ground-truth
surface points (`val_chamfer`) and to the frozen VAE's reconstruction of the ground truth
(`val_chamfer_recon`: the DiT's error alone, meaningful even with a poor or random VAE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import trimesh
from torch import nn

from engine.families.base import StepOutput
from engine.families.midi.latents import FrozenParts, encode_conditions, encode_posterior, sample_posterior
from engine.models.dit.flow import RectifiedFlowScheduler, add_noise, flow_target, sample_logit_normal_sigmas
from engine.models.dit.mesh import extract_mesh
from engine.seeding import sample_generators

__all__ = [
    "EvalSettings",
    "FlowTask",
    "batch_conditions",
    "batch_posterior",
    "chamfer_distance",
    "condition_kwargs",
    "flow_loss",
    "generate_latents",
    "mesh_surface_points",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The DiT inside a DDP / compiled wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def frozen_parts(model: nn.Module) -> FrozenParts:
    """The frozen VAE/encoders attached to the DiT by the family, moved to the DiT's device."""
    inner = unwrap(model)
    frozen: FrozenParts = inner.midi_frozen
    device = next(inner.parameters()).device
    if frozen.device != device:
        frozen.to(device)
    return frozen


def batch_posterior(model: nn.Module, batch: dict[str, Any], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B*K, T, C) posterior mean and log-variance: from the cache, or encoded now by the frozen VAE."""
    if "latent_mean" in batch:
        return batch["latent_mean"].float(), batch["latent_logvar"].float()
    frozen = frozen_parts(model)
    frozen.calls["vae"] += 1
    return encode_posterior(frozen.vae, batch["surface"], num_tokens)


def batch_conditions(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(B*K, 1, Dc) CLIP tokens (None for TripoSG) and (B*K, M, Dd) DINOv2 tokens: cached or encoded now."""
    if "dino" in batch:
        return batch.get("clip"), batch["dino"]
    frozen = frozen_parts(model)
    return encode_conditions(frozen, batch["instance_images"], batch["scene_images"], batch["masks"])


def dit_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the DiT's (frozen) base weights, which its inputs must match outside autocast."""
    return unwrap(model).proj_in.weight.dtype


def condition_kwargs(model: nn.Module, clip: torch.Tensor | None, dino: torch.Tensor) -> dict[str, torch.Tensor]:
    """The DiT's keyword conditions: MIDI has CLIP -> attn2 and DINOv2 -> attn2_2; TripoSG DINOv2 -> attn2."""
    dtype = dit_dtype(model)
    if unwrap(model).config.use_cross_attention_2:
        return {"encoder_hidden_states": clip.to(dtype), "encoder_hidden_states_2": dino.to(dtype)}
    return {"encoder_hidden_states": dino.to(dtype)}


def _lora_untouched(model: nn.Module) -> bool:
    """True while every LoRA B matrix is still zero (PEFT's initialisation): no optimizer step yet."""
    return all(not bool(p.detach().any()) for n, p in unwrap(model).named_parameters() if "lora_B" in n)


def _per_instance_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # (B*K,)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def flow_loss(
    model: nn.Module,
    batch: dict[str, Any],
    num_tokens: int,
    cfg_dropout: float,
    logit_mean: float,
    logit_std: float,
    weighting: str = "logit_normal",
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's flow-matching loss (mean over real instances) and extra metrics."""
    mean, logvar = batch_posterior(model, batch, num_tokens)
    clip, dino = batch_conditions(model, batch)
    slots = int(batch["num_instances_per_batch"])
    counts = batch["num_instances"]
    scenes = counts.shape[0]
    device = mean.device
    seeds = batch.get("sample_seeds")
    if seeds is not None:
        # Per-scene draws from the trainer's sample seeds: a scene gets the same latents, noise level, CFG
        # dropout and noise whichever process or micro-batch it lands in (multi-GPU == accumulation).
        eps, noise, sigma_scene, keep_scene = _scene_draws(
            seeds, slots, tuple(mean.shape[1:]), weighting, logit_mean, logit_std, cfg_dropout
        )
        x0 = mean.to(device) + torch.exp(0.5 * logvar.to(device)) * eps.to(device, mean.dtype)
        noise = noise.to(device, x0.dtype)
    else:
        # 1. Latents: sampled from the posterior exactly as encoding on the fly would.
        x0 = sample_posterior(mean.to(device), logvar.to(device))
        # 2. One noise level per scene.
        if weighting == "uniform":
            sigma_scene = torch.rand(scenes).clamp(1e-6, 1 - 1e-6)
        else:
            sigma_scene = sample_logit_normal_sigmas(scenes, logit_mean, logit_std)
        # 3. CFG dropout: both conditions of a scene become zeros.
        keep_scene = torch.rand(scenes) >= cfg_dropout
        noise = None
    sigma = sigma_scene.to(device).repeat_interleave(slots)
    if not keep_scene.any() and _lora_untouched(model):
        # A first step with every condition zeroed gives the cross-attention LoRAs no gradient, which the
        # trainer's gradient-flow guard reports as a mis-targeted adapter. Keep them on that step only
        # (no RNG draw changes, and a resumed run has trained B matrices, so resume stays exact).
        keep_scene[:] = True
    keep = keep_scene.to(device).repeat_interleave(slots)
    if clip is not None:
        clip = clip * keep[:, None, None].to(clip.dtype)
    dino = dino * keep[:, None, None].to(dino.dtype)
    # 4. Noise and the velocity target.
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = add_noise(x0, noise, sigma)
    pred = model(
        x_t.to(dit_dtype(model)),
        sigma * 1000.0,
        **condition_kwargs(model, clip, dino),
        attention_kwargs={"num_instances": counts.tolist(), "num_instances_per_batch": slots},
    ).sample
    per_instance = _per_instance_mse(pred, flow_target(x0, noise))
    real = batch["real"].to(device)
    loss = per_instance[real].mean()
    metrics = {"cfg_dropped": float(1.0 - keep.float().mean()), "sigma_mean": float(sigma_scene.mean())}
    return loss, metrics


def _scene_draws(
    seeds: torch.Tensor, slots: int, latent_shape: tuple[int, ...], weighting: str, logit_mean: float,
    logit_std: float, cfg_dropout: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eps, noise) of shape (scenes * slots, *latent_shape), sigma (scenes,), keep (scenes,) from per-scene seeds."""
    eps, noise, sigma, keep = [], [], [], []
    for gen in sample_generators(seeds.cpu()):
        if weighting == "uniform":
            sigma.append(torch.rand((), generator=gen).clamp(1e-6, 1 - 1e-6))
        else:
            sigma.append(sample_logit_normal_sigmas(1, logit_mean, logit_std, generator=gen)[0])
        keep.append(torch.rand((), generator=gen) >= cfg_dropout)
        eps.append(torch.randn((slots, *latent_shape), generator=gen))
        noise.append(torch.randn((slots, *latent_shape), generator=gen))
    return torch.cat(eps), torch.cat(noise), torch.stack(sigma), torch.stack(keep)


@torch.no_grad()
def validation_loss(
    model: nn.Module, batch: dict[str, Any], num_tokens: int, sigmas: list[float], seed: int
) -> tuple[float, int]:
    """Summed loss over real instances x sigma grid (deterministic noise from `seed`) and the count."""
    mean, logvar = batch_posterior(model, batch, num_tokens)
    clip, dino = batch_conditions(model, batch)
    device = mean.device
    slots = int(batch["num_instances_per_batch"])
    counts = batch["num_instances"]
    real = batch["real"].to(device)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(mean.shape, generator=gen).to(device)
    x0 = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    total, count = 0.0, 0
    kwargs = condition_kwargs(model, clip, dino)
    for s in sigmas:
        noise = torch.randn(mean.shape, generator=gen).to(device)
        sigma = torch.full((mean.shape[0],), float(s), device=device)
        pred = model(
            add_noise(x0, noise, sigma).to(dit_dtype(model)), sigma * 1000.0, **kwargs,
            attention_kwargs={"num_instances": counts.tolist(), "num_instances_per_batch": slots},
        ).sample
        per_instance = _per_instance_mse(pred, flow_target(x0, noise))
        total += float(per_instance[real].sum())
        count += int(real.sum())
    return total, count


@torch.no_grad()
def generate_latents(
    model: nn.Module,
    clip: torch.Tensor | None,  # (n, 1, Dc)
    dino: torch.Tensor,  # (n, M, Dd)
    num_tokens: int,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator,
) -> torch.Tensor:  # (n, T, C)
    """Samples one scene's n instance latents jointly (MIDI's inference layout, CFG with zero conditions)."""
    inner = unwrap(model)
    count = dino.shape[0]
    device = dino.device
    shape = (count, num_tokens, inner.config.in_channels)
    cond = condition_kwargs(model, clip, dino)
    dtype = dit_dtype(model)

    def velocity(x: torch.Tensor, t: torch.Tensor, **c: torch.Tensor) -> torch.Tensor:
        return model(x.to(dtype), t, **c, attention_kwargs={"num_instances": count}).sample.float()

    latents = torch.randn(shape, generator=generator).to(device)
    return RectifiedFlowScheduler().sample(
        velocity, shape, num_steps=steps, guidance_scale=guidance_scale, cond=cond, latents=latents, device=device
    )


def mesh_surface_points(mesh: Any, count: int, seed: int) -> np.ndarray | None:
    """(count, 3) points sampled on a trimesh, or None when the mesh is empty."""
    if len(getattr(mesh, "faces", [])) == 0:
        return None
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float32)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> float:  # (N, 3), (M, 3)
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b plus b->a (not squared)."""
    d = torch.cdist(a.float()[None], b.float()[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    return float(d.min(dim=1).values.mean() + d.min(dim=0).values.mean())


CHAMFER_MISSING = 1.0
"""Chamfer distance charged for an instance whose generated field has no surface (half the frame's width)."""


@torch.no_grad()
def reference_points(model: nn.Module, gt_latents: torch.Tensor, count: int, octree_resolution: int,
                     seed: int) -> list[np.ndarray | None]:
    """`count` surface points of the frozen VAE's mesh of each instance's ground-truth latents (n, T, C);
    None where that mesh has no surface."""
    vae = frozen_parts(model).vae
    meshes = extract_mesh(vae, gt_latents.to(next(vae.parameters()).dtype), octree_resolution=octree_resolution)
    return [mesh_surface_points(mesh, count, seed + index) for index, mesh in enumerate(meshes)]


@torch.no_grad()
def scene_chamfer(
    model: nn.Module,
    clip: torch.Tensor | None,  # (n, 1, Dc)
    dino: torch.Tensor,  # (n, M, Dd)
    gt_points: torch.Tensor,  # (n, G, 3)
    references: list[np.ndarray | None],  # n x (G, 3): `reference_points` of the ground truth
    num_tokens: int,
    steps: int,
    guidance_scale: float,
    octree_resolution: int,
    seed: int,
) -> tuple[list[float], list[float], int]:
    """Generates one scene and meshes each instance.

    Returns:
        Per-instance Chamfer distances to the ground-truth surface points, per-instance Chamfer distances
        to the frozen VAE's own reconstruction of the ground truth (the DiT's error alone, whatever the
        VAE's quality), and the number of instances whose generated field had a surface.
    """
    frozen = frozen_parts(model)
    vae_dtype = next(frozen.vae.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    latents = generate_latents(model, clip, dino, num_tokens, steps, guidance_scale, generator)
    meshes = extract_mesh(frozen.vae, latents.to(vae_dtype), octree_resolution=octree_resolution)
    to_gt, to_recon, found = [], [], 0
    count = gt_points.shape[1]
    for index, (mesh, recon) in enumerate(zip(meshes, references)):
        points = mesh_surface_points(mesh, count, seed + index)
        if points is None:
            to_gt.append(CHAMFER_MISSING)
            to_recon.append(CHAMFER_MISSING)
            continue
        found += 1
        generated = torch.from_numpy(points)
        to_gt.append(chamfer_distance(generated, gt_points[index].cpu()))
        to_recon.append(CHAMFER_MISSING if recon is None else chamfer_distance(generated, torch.from_numpy(recon)))
    return to_gt, to_recon, found


@dataclass(frozen=True)
class EvalSettings:
    """How MIDI validation runs: the loss's sigma grid, and the Chamfer generation of a few scenes."""

    seed: int = 0
    sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    chamfer_scenes: int = 2
    sample_steps: int = 10
    guidance_scale: float = 3.0
    octree_resolution: int = 48


@torch.no_grad()
def evaluate_scenes(model: nn.Module, batches: Any, num_tokens: int, settings: EvalSettings, with_chamfer: bool,
                    references: dict[tuple[str, int], list[np.ndarray | None]] | None = None) -> dict[str, float]:
    """Validation loss on the fixed sigma grid and, when asked, Chamfer distance of a few generated scenes.

    `references` keeps each Chamfer scene's `reference_points` across evaluations (the VAE is frozen, so they
    do not change, and their marching cubes cost as much as the generated scene's); None: computed each time.
    """
    references = {} if references is None else references
    total, count = 0.0, 0
    distances: list[float] = []
    recon_distances: list[float] = []
    found = 0
    scenes_done = 0
    for index, batch in enumerate(batches):
        loss_sum, n = validation_loss(model, batch, num_tokens, list(settings.sigmas),
                                      seed=settings.seed * 1_000_003 + index)
        total += loss_sum
        count += n
        if not with_chamfer or scenes_done >= settings.chamfer_scenes:
            continue
        clip, dino = batch_conditions(model, batch)
        mean, _ = batch_posterior(model, batch, num_tokens)
        slots = int(batch["num_instances_per_batch"])
        for scene, real in enumerate(batch["num_instances"].tolist()):
            if scenes_done >= settings.chamfer_scenes:
                break
            rows = slice(scene * slots, scene * slots + real)
            seed = settings.seed + scenes_done
            key = (batch["scenes"][scene], seed)
            if key not in references:
                references[key] = reference_points(model, mean[rows], batch["gt_points"].shape[1],
                                                   settings.octree_resolution, seed)
            d, r, f = scene_chamfer(
                model, clip[rows] if clip is not None else None, dino[rows], batch["gt_points"][rows],
                references[key], num_tokens, settings.sample_steps, settings.guidance_scale,
                settings.octree_resolution, seed=seed,
            )
            distances.extend(d)
            recon_distances.extend(r)
            found += f
            scenes_done += 1
    metrics = {"val_loss": total / max(count, 1)}
    if distances:
        metrics["val_chamfer"] = float(np.mean(distances))
        metrics["val_chamfer_recon"] = float(np.mean(recon_distances))
        metrics["val_surface_found"] = found / len(distances)
    return metrics


@dataclass(frozen=True)
class FlowTask:
    """Rectified-flow matching (training) and validation loss + Chamfer of generated scenes (evaluation).

    Chamfer runs on every `chamfer_every`-th evaluation of this task (0: never); the count lives here, per run.
    """

    num_tokens: int
    cfg_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: str = "logit_normal"
    eval: EvalSettings = field(default_factory=EvalSettings)
    chamfer_every: int = 1
    name: str = "flow"
    primary_metric: str = "val_loss"
    greater_is_better: bool = False
    _evals: list = field(default_factory=list, compare=False, repr=False)  # one entry per evaluation so far
    _references: dict = field(default_factory=dict, compare=False, repr=False)  # evaluate_scenes' references

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        loss, metrics = flow_loss(model, batch, self.num_tokens, self.cfg_dropout, self.logit_mean, self.logit_std,
                                  self.weighting)
        real = int(batch["real"].sum())
        return StepOutput(loss=loss, metrics=metrics, num_samples=real, num_tokens=real * self.num_tokens)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, with_chamfer: bool | None = None) -> dict[str, float]:
        if with_chamfer is None:
            with_chamfer = self.chamfer_every > 0 and len(self._evals) % self.chamfer_every == 0
        self._evals.append(with_chamfer)
        return evaluate_scenes(model, batches, self.num_tokens, self.eval, with_chamfer, self._references)
