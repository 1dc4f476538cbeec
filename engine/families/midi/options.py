"""Provides the MIDI family's profile keys and their resolution into `MidiOptions`, checked once.

What the family adds to a profile (`model.*`, `data.*`, `lora.*` keys) is declared in the three pydantic
models; `resolve_options` reads the base folder's transformer config once and fixes the multi-instance
blocks, and `check_profile` lists every problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.cache import cache_root
from engine.lora.targets import DIT_ATTENTION_KINDS, DIT_PROJECTIONS

MIDI_MI_BLOCKS = [8, 9, 10, 11, 12]
"""MIDI-3D's multi-instance self-attention blocks (of 21)."""

TINY_NUM_LAYERS = 3
"""Blocks of the tiny random base used when `model.pretrained` is empty (smoke tests)."""


class MidiModelOptions(BaseModel):
    """The `model` keys the midi family adds."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    mi_blocks: list[int] | None = Field(
        default=None,
        description="DiT blocks whose self-attention is multi-instance; empty = MIDI's 8-12 (the middle block "
        "of a model with fewer than 13 layers); [] turns it off.",
    )
    num_instances_per_batch: int = Field(
        default=8, ge=1, le=64, description="K: instance slots per scene (padded with duplicates or sub-sampled)."
    )
    cfg_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Probability a scene's image conditions are zeroed.")
    num_tokens: int = Field(default=2048, ge=1, le=65536, description="VAE latent tokens per instance (MIDI: 2048).")
    weighting: Literal["logit_normal", "uniform"] = Field(default="logit_normal", description="Training sigma density.")
    logit_mean: float = Field(default=0.0, ge=-10.0, le=10.0, description="Mean of the logit-normal sigma density.")
    logit_std: float = Field(default=1.0, gt=0.0, le=10.0, description="Std of the logit-normal sigma density.")
    frozen_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="Dtype of the frozen VAE, CLIP and DINOv2 (fp16/bf16 halve their memory)."
    )
    dit_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="Dtype of the frozen DiT base weights; LoRA weights stay fp32."
    )
    tiny_seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of the tiny random base used when `model.pretrained` is empty.")
    demo_base: bool = Field(
        default=False,
        description="With an empty `model.pretrained`: load the demo's tiny base (its VAE and DiT pretrained on "
        "synthetic scenes by two training runs, built and cached under $LORA3D_CACHE on first use).",
    )


class MidiDataOptions(BaseModel):
    """The `data` keys the midi family adds."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    num_samples: int | None = Field(
        default=None, ge=16, le=1_000_000, description="Surface points per instance fed to the VAE; empty = all prepared points."
    )
    enable_latent_cache: bool = Field(
        default=True, description="Cache the frozen VAE posteriors and image tokens on disk (false: encode every step)."
    )
    cache_dir: Path | None = Field(default=None, description="Latent cache folder; empty = $LORA3D_CACHE/midi-latents.")
    val_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of scenes held out (last by name) when there is no val split."
    )
    eval_sigmas: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default=[0.1, 0.3, 0.5, 0.7, 0.9], description="Noise levels of the validation loss (fixed noise)."
    )
    eval_chamfer_every: int = Field(
        default=1, ge=0, le=1_000_000, description="Generate scenes and score Chamfer every N-th evaluation; 0 = never."
    )
    eval_chamfer_scenes: int = Field(default=2, ge=1, le=10_000, description="Validation scenes generated for Chamfer.")
    eval_sample_steps: int = Field(default=10, ge=1, le=10_000, description="Sampling steps of the Chamfer generation.")
    eval_guidance_scale: float = Field(default=3.0, ge=0.0, le=100.0, description="CFG scale of the Chamfer generation.")
    eval_octree_resolution: int = Field(default=48, ge=8, le=512, description="Marching-cubes grid cells per axis.")
    synthetic_domain: Literal["A", "B"] = Field(default="B", description="Synthetic scenes when `data.root` is empty.")
    synthetic_train_scenes: int = Field(default=8, ge=1, le=10_000)
    synthetic_val_scenes: int = Field(default=4, ge=0, le=10_000)
    synthetic_seed: int = Field(default=0, ge=0, le=2**32 - 1)
    synthetic_image_size: int = Field(default=64, ge=16, le=2048)
    synthetic_num_samples: int = Field(default=2048, ge=64, le=1_000_000)


class MidiLoraOptions(BaseModel):
    """The `lora` keys the midi family adds: where in the DiT the adapters go."""

    model_config = ConfigDict(extra="forbid")
    target_blocks: list[int] | None = Field(default=None, description="DiT block indices; empty = all.")
    attention_kinds: list[Literal["self", "cross", "cross2"]] | None = Field(
        default=None, description="DiT attentions to adapt: `self` (attn1), `cross` (attn2), `cross2` (attn2_2); "
        "empty = every kind the model has."
    )


class MidiPreviewOptions(BaseModel):
    """The `previews` keys the midi family adds (guidance and mesh grid are `data.eval_guidance_scale` and
    `data.eval_octree_resolution`, as for the Chamfer generation)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    sampling_steps: int = Field(default=8, ge=1, le=1000, description="Sampling steps of a preview's generation (few: "
                                "previews show the trend, `lora3d infer` the quality).")


@dataclass(frozen=True)
class MidiOptions:
    """What the family derives from a resolved profile, once.

    Attributes:
        pretrained: the base pipeline folder; with an empty `model.pretrained` the cached demo base
            (`model.demo_base`) or the cached tiny random base.
        transformer: the DiT's config (`transformer/config.json`), with `use_cross_attention_2` filled in.
        mi_blocks: the multi-instance self-attention blocks.
        attention_kinds: the attentions LoRA adapts (the kinds this DiT has, unless the profile names some).
        cache_dir: the latent cache folder, or None when the cache is off.
        frozen: the run's loaded frozen VAE/encoders, filled by the first `build_model` (the model and the
            datasets of one recipe share them; another recipe loads its own).
    """

    pretrained: Path
    transformer: dict[str, Any]
    mi_blocks: tuple[int, ...]
    attention_kinds: tuple[str, ...]
    cache_dir: Path | None
    frozen: list = field(default_factory=list, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return int(self.transformer.get("num_layers", 21))


DEMO_BASE_SETTINGS: dict[str, Any] = {
    "variant": "full",
    "seed": 0,
    "num_tokens": 32,
    "num_instances_per_batch": 4,
    "mi_blocks": [1],
    "cfg_dropout": 0.1,
    "points": 1024,
    "image": 64,
    "vae_scenes": 24,
    "vae_steps": 1000,
    "vae_batch": 16,
    "vae_lr": 0.003,
    "a_scenes": 16,
    "base_steps": 600,
    "base_batch": 4,
    "base_lr": 0.002,
}
"""How the demo's tiny base is built (`engine.families.midi.demo_base`): the VAE's run (`vae_*`, on `vae_scenes`
synthetic scenes per domain) and the DiT's run (`base_*`, on `a_scenes` domain-A scenes); the cache keys hash these."""

_VAE_KEYS = ("seed", "num_tokens", "points", "vae_scenes", "vae_steps", "vae_batch", "vae_lr")
DEMO_BASE_VERSION = 3
"""Bumped when the way the demo base is built changes, so older cached bases are not reused."""


def _settings_key(settings: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    chosen = {k: settings[k] for k in keys} if keys else settings
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def demo_vae_path(settings: dict[str, Any]) -> Path:
    """Where the tiny pipeline with the demo's trained VAE (the first run's result) is cached."""
    return cache_root() / f"midi-demo-vae-v{DEMO_BASE_VERSION}-{_settings_key(settings, _VAE_KEYS)}"


def demo_base_path(settings: dict[str, Any]) -> Path:
    """Where the demo's base pipeline (trained VAE and DiT) built with `settings` is cached."""
    quick = "-quick" if settings["variant"] == "quick" else ""
    return cache_root() / f"midi-demo-base-v{DEMO_BASE_VERSION}{quick}-{_settings_key(settings)}"


def resolve_mi_blocks(mi_blocks: list[int] | None, num_layers: int) -> list[int]:
    """The multi-instance blocks for a model of `num_layers` blocks (see `MidiModelOptions.mi_blocks`)."""
    if mi_blocks is not None:
        return list(mi_blocks)
    return list(MIDI_MI_BLOCKS) if num_layers > max(MIDI_MI_BLOCKS) else [num_layers // 2]


def tiny_base_path(seed: int) -> Path:
    """Where the tiny random base of `model.tiny_seed` is cached."""
    return cache_root() / f"midi-tiny-random-{seed}"


def transformer_config(pretrained: Path | None) -> dict[str, Any] | None:
    """The DiT config of a base folder (None when unreadable: loading the base reports the broken folder)."""
    if pretrained is None:
        return {"num_layers": TINY_NUM_LAYERS, "use_cross_attention_2": True}
    path = Path(pretrained) / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("use_cross_attention_2") is None:
        config["use_cross_attention_2"] = config.get("cross_attention_2_dim") is not None
    return config


def model_kinds(config: dict[str, Any]) -> tuple[str, ...]:
    """The attention kinds a DiT of this config has (`cross2` only with MIDI's second cross-attention)."""
    return tuple(k for k in DIT_ATTENTION_KINDS if k != "cross2" or config.get("use_cross_attention_2"))


def resolve_options(profile: Any) -> MidiOptions:
    """The options of a checked profile."""
    model, data = profile.model, profile.data
    config = transformer_config(model.pretrained) or {}
    kinds = tuple(profile.lora.attention_kinds) if profile.lora.attention_kinds is not None else model_kinds(config)
    cache = None
    if data.enable_latent_cache:
        cache = Path(data.cache_dir) if data.cache_dir else cache_root() / "midi-latents"
    return MidiOptions(
        pretrained=Path(model.pretrained) if model.pretrained else (
            demo_base_path(DEMO_BASE_SETTINGS) if model.demo_base else tiny_base_path(model.tiny_seed)),
        transformer=config,
        mi_blocks=tuple(resolve_mi_blocks(model.mi_blocks, int(config.get("num_layers", 21)))),
        attention_kinds=kinds,
        cache_dir=cache,
    )


def check_profile(profile: Any) -> list[str]:
    """Every cross-key problem of a midi profile (task filled in, preset applied)."""
    errors: list[str] = []
    model, lora = profile.model, profile.lora
    if model.task == "vae":
        if lora.method != "full":
            errors.append(f"`lora.method` must be `full` for `model.task: vae` (the VAE trains whole), got {lora.method!r}. "
                          "Set `lora.method: full`.")
        if profile.data.root is not None:
            errors.append(f"`data.root` must be empty for `model.task: vae` (it trains on synthetic primitives of "
                          f"domains A and B), got {str(profile.data.root)!r}. Remove `data.root`.")
    config = transformer_config(model.pretrained)
    if config is None:
        return errors  # load_pipeline reports the broken folder with its path
    num_layers = int(config.get("num_layers", 21))
    valid = f"0..{num_layers - 1} (this model has num_layers={num_layers})"
    blocks = resolve_mi_blocks(model.mi_blocks, num_layers)
    bad = [b for b in blocks if not 0 <= b < num_layers]
    if bad:
        errors.append(f"`model.mi_blocks` out of range, got {blocks}. Use block indices in {valid}.")
    if len(set(blocks)) != len(blocks):
        errors.append(f"`model.mi_blocks` lists a block twice, got {blocks}. List each block once.")
    if lora.target_blocks is not None:
        bad = [b for b in lora.target_blocks if not 0 <= b < num_layers]
        if bad:
            errors.append(f"`lora.target_blocks` out of range, got {lora.target_blocks}. Use block indices in {valid}.")
    if lora.attention_kinds and "cross2" in lora.attention_kinds and not config.get("use_cross_attention_2"):
        errors.append(
            f"`lora.attention_kinds` includes `cross2`, got {lora.attention_kinds}, but this TripoSG model has no "
            "second cross-attention. Use `self` and `cross`."
        )
    if lora.target_modules is not None:
        bad = [m for m in lora.target_modules if m not in DIT_PROJECTIONS]
        if bad or not lora.target_modules:
            errors.append(f"`lora.target_modules` for the DiT must be a subset of {list(DIT_PROJECTIONS)}, got {lora.target_modules}.")
    return errors
