"""Provides the MIDI latent cache: frozen VAE posteriors and frozen image-encoder tokens, stored once on disk.

The VAE, CLIP and DINOv2 are frozen during LoRA fine-tuning, so their outputs for a given input never
change. PartCrafter re-encodes every surface at every step; here each instance's posterior (mean and
log-variance) and each scene's condition tokens are computed once and stored as safetensors. Each step
then draws `mean + std * eps` with torch's global RNG (`sample_posterior`), exactly the draw
`DiagonalGaussian.sample()` makes when encoding on the fly, so a run with the cache equals one without.

Cache keys hash everything the stored values depend on: the VAE's (or encoders') config and weights, the
input file's identity (path, size and modification time), `num_samples`, `num_tokens` and the query seed.
Changing any of them makes a new key, so a stale entry is never read (old entries stay until deleted).

NOTE: the VAE's query points are chosen with a fixed seed (`QUERY_SEED`) in both paths; with a fresh
seed per step (PartCrafter) the cache could not be exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.families.midi.scene_data import PreparedScene
from engine.models.dit.conditioning import encode_clip_image, encode_dinov2_image
from engine.models.dit.vae import DiagonalGaussian

__all__ = [
    "QUERY_SEED",
    "ConditionCache",
    "FrozenParts",
    "PosteriorCache",
    "encode_conditions",
    "encode_posterior",
    "module_fingerprint",
    "sample_posterior",
    "scene_surfaces",
]

QUERY_SEED = 0
"""Seed of the VAE's 4T-candidate draw; fixed so that cached and on-the-fly posteriors agree."""

_FINGERPRINT_ATTR = "_lora3d_fingerprint"


@dataclass
class FrozenParts:
    """The frozen components around the DiT: VAE, image encoders and their pre-processing.

    Held on the DiT as a plain attribute (not a sub-module), so they are not in its state dict, not in
    the adapter and not wrapped by accelerate.
    """

    vae: nn.Module
    dino: nn.Module
    clip: nn.Module | None
    dino_preprocessor: Any
    clip_preprocessor: Any = None
    kind: str = "midi"
    folder: Path | None = None
    calls: dict[str, int] = field(default_factory=lambda: {"vae": 0, "image": 0})
    """How many times each frozen part ran (the cache tests count these)."""

    def to(self, device: torch.device | str) -> FrozenParts:
        for module in (self.vae, self.dino, self.clip):
            if module is not None:
                module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device


def module_fingerprint(*modules: nn.Module | None, extra: Any = None) -> str:
    """A hash of the modules' configs and every weight tensor (names, shapes, dtypes and bytes).

    Remembered on the module until a parameter changes in place (`_version`); cheap enough for the hub
    models (about one second per GB).
    """
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            digest.update(b"none")
            continue
        version = sum(int(p._version) for p in module.parameters())
        cached = getattr(module, _FINGERPRINT_ATTR, None)
        if cached is not None and cached[0] == version:
            digest.update(cached[1].encode())
            continue
        part = hashlib.sha256()
        config = getattr(module, "config", None)
        if config is not None:
            as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_")}
            part.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
        for name, tensor in module.state_dict().items():
            part.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            part.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        object.__setattr__(module, _FINGERPRINT_ATTR, (version, part.hexdigest()))
        digest.update(part.hexdigest().encode())
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _file_identity(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def scene_surfaces(scene: PreparedScene, num_samples: int | None) -> torch.Tensor:
    """(n, P, 6) float32 xyz + normals of every instance, the first `num_samples` points of each.

    The prepared points are already uniform random samples, so a prefix is a uniform sub-sample.
    """
    surfaces = torch.from_numpy(scene.surfaces())  # (n, P, 6)
    return surfaces[:, :num_samples] if num_samples else surfaces


@torch.no_grad()
def encode_posterior(
    vae: nn.Module, surfaces: torch.Tensor, num_tokens: int  # (B, P, 6)
) -> tuple[torch.Tensor, torch.Tensor]:  # (B, T, C) each, float32
    """The frozen VAE's posterior mean and clamped log-variance for each surface (query seed `QUERY_SEED`)."""
    param = next(vae.parameters())
    was_training = vae.training
    vae.eval()  # eval: FPS starts at candidate 0, so the posterior is a pure function of the input
    posterior = vae.encode(surfaces.to(param.device), num_tokens=num_tokens, seed=QUERY_SEED).latent_dist
    vae.train(was_training)
    return posterior.mean.float(), posterior.logvar.float()


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:  # (B, T, C) each
    """Draws `mean + std * eps` with torch's global RNG, the same draw as `DiagonalGaussian.sample()`."""
    return DiagonalGaussian(torch.cat([mean, logvar], dim=-1)).sample()


@torch.no_grad()
def encode_conditions(
    frozen: FrozenParts,
    instance_images: torch.Tensor,  # (n, 3, H, W) uint8, white outside the instance
    scene_images: torch.Tensor,  # (n, 3, H, W) uint8
    masks: torch.Tensor,  # (n, H, W) bool
) -> tuple[torch.Tensor | None, torch.Tensor]:  # (n, 1, Dc) or None, (n, M, Dd)
    """MIDI's two conditions: the projected CLIP token and the 7-channel DINOv2 tokens (TripoSG: DINOv2 only)."""
    frozen.calls["image"] += 1
    clip = None
    if frozen.clip is not None:
        clip = encode_clip_image(frozen.clip, frozen.clip_preprocessor, instance_images)
    dino = encode_dinov2_image(frozen.dino, frozen.dino_preprocessor, instance_images, scene_images, masks)
    return clip, dino


def scene_condition_inputs(scene: PreparedScene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, 3, H, W) instance images, (n, 3, H, W) scene images, (n, H, W) masks of a prepared scene."""
    rgb = np.asarray(scene.image)
    inst, masks = [], []
    for index in range(scene.num_instances):
        mask = scene.instance_mask(index)
        image = np.full_like(rgb, 255)
        image[mask] = rgb[mask]
        inst.append(image)
        masks.append(mask)
    instance_images = torch.from_numpy(np.stack(inst)).permute(0, 3, 1, 2).contiguous()
    scene_images = torch.from_numpy(rgb).permute(2, 0, 1)[None].expand(len(inst), -1, -1, -1).contiguous()
    return instance_images, scene_images, torch.from_numpy(np.stack(masks))


class PosteriorCache:
    """Per-instance VAE posteriors on disk under `root/posterior/`, keyed by VAE, file and settings.

    Args:
        root: cache folder (created).
        vae: the frozen VAE.
        num_tokens: latent tokens T.
        num_samples: surface points per instance fed to the encoder (None = all).
    """

    def __init__(self, root: Path, vae: nn.Module, num_tokens: int, num_samples: int | None) -> None:
        self.root = Path(root) / "posterior"
        self.vae = vae
        self.num_tokens = num_tokens
        self.num_samples = num_samples
        self.vae_key = module_fingerprint(vae)
        self.encoded = 0
        """Instances encoded by this cache object (misses)."""

    def key(self, surface_file: Path) -> str:
        payload = [self.vae_key, _file_identity(surface_file), self.num_samples, self.num_tokens, QUERY_SEED]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def path(self, surface_file: Path) -> Path:
        key = self.key(surface_file)
        return self.root / key[:2] / f"{key}.safetensors"

    def fill(self, scene: PreparedScene) -> int:
        """Encodes the instances of `scene` that have no entry yet (one VAE call); returns how many."""
        files = [scene.folder / entry["file"] for entry in scene.manifest["instances"]]
        missing = [i for i, f in enumerate(files) if not self.path(f).is_file()]
        if not missing:
            return 0
        surfaces = scene_surfaces(scene, self.num_samples)[missing]
        mean, logvar = encode_posterior(self.vae, surfaces, self.num_tokens)
        for row, index in enumerate(missing):
            _save_atomic({"mean": mean[row], "logvar": logvar[row]}, self.path(files[index]))
        self.encoded += len(missing)
        return len(missing)

    def load(self, scene: PreparedScene, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(len(indices), T, C) mean and log-variance of the chosen instances."""
        means, logvars = [], []
        entries = scene.manifest["instances"]
        for index in indices:
            tensors = load_file(str(self.path(scene.folder / entries[index]["file"])))
            means.append(tensors["mean"])
            logvars.append(tensors["logvar"])
        return torch.stack(means), torch.stack(logvars)


class ConditionCache:
    """Per-scene condition tokens on disk under `root/conditions/`, keyed by encoders and image files."""

    def __init__(self, root: Path, frozen: FrozenParts) -> None:
        self.root = Path(root) / "conditions"
        self.frozen = frozen
        extra = [repr(frozen.dino_preprocessor), repr(frozen.clip_preprocessor)]
        self.encoder_key = module_fingerprint(frozen.clip, frozen.dino, extra=extra)
        self.encoded = 0

    def path(self, scene: PreparedScene) -> Path:
        image_file = scene.manifest.get("image", {}).get("file", "image.png")
        id_file = scene.manifest.get("id_map", {}).get("file", "seg.png")
        payload = [self.encoder_key, _file_identity(scene.folder / image_file), _file_identity(scene.folder / id_file),
                   scene.num_instances]
        key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()
        return self.root / key[:2] / f"{key}.safetensors"

    def fill(self, scene: PreparedScene) -> int:
        path = self.path(scene)
        if path.is_file():
            return 0
        clip, dino = encode_conditions(self.frozen, *scene_condition_inputs(scene))
        tensors = {"dino": dino}
        if clip is not None:
            tensors["clip"] = clip
        _save_atomic(tensors, path)
        self.encoded += 1
        return 1

    def load(self, scene: PreparedScene, indices: list[int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        tensors = load_file(str(self.path(scene)))
        clip = tensors["clip"][indices] if "clip" in tensors else None
        return clip, tensors["dino"][indices]
