"""Provides the MIDI demo's tiny base as two cached training runs: their profiles, exports and prerequisites.

1. The VAE: the tiny random pipeline's VAE trained in full as an SDF autoencoder of synthetic A and B
   primitives (`model.task: vae`, `engine.families.midi.demo_vae`), its latents then rescaled to unit std;
   exported as the tiny pipeline with this VAE.
2. The DiT: that pipeline's DiT trained in full on synthetic domain-A scenes (`model.task: flow`,
   `lora.method: full`); exported as the pipeline with this DiT, in the real MIDI folder layout: the base.

Each is a `Prerequisite`: built once by the engine's Trainer (`engine.train.prerequisites`), written
atomically under `$LORA3D_CACHE`, keyed by a hash of its settings (`options.DEMO_BASE_SETTINGS`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from engine.families.base import Prerequisite, Recipe
from engine.families.midi.demo_vae import build_vae_shapes, normalize_latent_scale
from engine.families.midi.options import demo_base_path, demo_vae_path

__all__ = ["base_prerequisites", "base_profile", "export_base", "export_vae", "vae_profile"]

_OPTIMISER = {"weight_decay": 0.0, "max_grad_norm": None, "device": "cpu", "mixed_precision": "no"}
"""Shared by both runs: plain AdamW without clipping, on the CPU (tiny models; the cache key holds no device)."""


def vae_profile(settings: dict[str, Any]) -> dict[str, Any]:
    """The run that trains the tiny random pipeline's VAE (every parameter) as an SDF autoencoder."""
    steps = settings["vae_steps"]
    return {
        "schema_version": 1,
        "name": "demo-midi-vae",
        "model": {"family": "midi", "task": "vae", "tiny_seed": settings["seed"], "num_tokens": settings["num_tokens"]},
        "lora": {"method": "full"},
        "data": {"synthetic_train_scenes": settings["vae_scenes"], "synthetic_val_scenes": 0,
                 "synthetic_num_samples": settings["points"], "synthetic_seed": settings["seed"]},
        "train": {"max_steps": steps, "batch_size": settings["vae_batch"], "lr": settings["vae_lr"],
                  "warmup_steps": max(1, steps // 20), "scheduler": "cosine", "seed": settings["seed"], **_OPTIMISER},
        "previews": {"enabled": False},  # a cached prerequisite: nobody looks at its run directory
    }


def base_profile(settings: dict[str, Any]) -> dict[str, Any]:
    """The run that trains the DiT of the pipeline with the trained VAE (every parameter) on domain A."""
    return {
        "schema_version": 1,
        "name": "demo-midi-base",
        "model": {"family": "midi", "task": "flow", "pretrained": str(demo_vae_path(settings)),
                  "mi_blocks": list(settings["mi_blocks"]), "num_instances_per_batch": settings["num_instances_per_batch"],
                  "num_tokens": settings["num_tokens"], "cfg_dropout": settings["cfg_dropout"]},
        "lora": {"method": "full"},
        "data": {"synthetic_domain": "A", "synthetic_train_scenes": settings["a_scenes"], "synthetic_val_scenes": 0,
                 "synthetic_seed": settings["seed"], "synthetic_image_size": settings["image"],
                 "synthetic_num_samples": settings["points"]},
        "train": {"max_steps": settings["base_steps"], "batch_size": settings["base_batch"], "lr": settings["base_lr"],
                  "warmup_steps": 0, "scheduler": "constant", "seed": settings["seed"], **_OPTIMISER},
        "previews": {"enabled": False},
    }


def _copy_pipeline(source: Path, staged: Path) -> None:
    """The pipeline folder `source` copied to `staged` (a file the atomic writer made: a folder replaces it)."""
    staged.unlink(missing_ok=True)
    shutil.copytree(source, staged)


def export_vae(model: nn.Module, recipe: Recipe, staged: Path) -> None:
    """The base folder of the VAE run with the trained VAE in it, its latents rescaled to unit std."""
    data = recipe.profile.data
    shapes = build_vae_shapes(data.synthetic_train_scenes, data.synthetic_num_samples, data.synthetic_seed)
    model.requires_grad_(False).eval()
    std = normalize_latent_scale(model, shapes.surfaces, recipe.profile.model.num_tokens)
    try:
        _copy_pipeline(recipe.options.pretrained, staged)
        shutil.rmtree(staged / "vae")
        model.save_pretrained(staged / "vae", safe_serialization=True)
        (staged / "vae" / "lora3d_demo_vae.txt").write_text(
            f"tiny demo VAE: trained {recipe.profile.train.max_steps} steps by lora3d's trainer (`model.task: vae`) on "
            f"{shapes.surfaces.shape[0]} synthetic A and B instances; posterior means rescaled by 1/{std:.4g}\n"
        )
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # the atomic writer removes a file, not a folder
        raise


def export_base(model: nn.Module, recipe: Recipe, staged: Path) -> None:
    """The run's base folder with the trained DiT in it (plain attention: multi-instance blocks are a run setting)."""
    model.requires_grad_(False).eval()
    model.set_default_attn_processor()
    try:
        _copy_pipeline(recipe.options.pretrained, staged)
        shutil.rmtree(staged / "transformer")
        model.save_pretrained(staged / "transformer", safe_serialization=True)
        (staged / "lora3d_demo_base.txt").write_text(
            f"tiny demo base: DiT trained {recipe.profile.train.max_steps} steps by lora3d's trainer "
            f"(`lora.method: full`) on synthetic domain A; VAE from {recipe.options.pretrained.name}\n"
        )
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def base_prerequisites(settings: dict[str, Any]) -> list[Prerequisite]:
    """The demo base built with `settings`, in build order: the VAE's run, then the DiT's (which loads the first)."""
    vae = f"the demo's tiny VAE ({settings['vae_steps']} steps as an SDF autoencoder of synthetic primitives)"
    base = f"the demo's tiny base (its DiT trained {settings['base_steps']} steps on synthetic domain A)"
    return [Prerequisite(demo_vae_path(settings), vae_profile(settings), export_vae, vae),
            Prerequisite(demo_base_path(settings), base_profile(settings), export_base, base)]
