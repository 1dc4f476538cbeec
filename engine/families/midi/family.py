"""Provides MidiFamily: LoRA fine-tuning of the MIDI-3D / TripoSG rectified-flow DiT as a lora3d family plugin.

The base is a local MIDI-3D or TripoSG pipeline folder (`model.pretrained`, loaded by
`engine.models.dit.pipeline.load_pipeline`); an empty `model.pretrained` uses a tiny random pipeline
(smoke tests). Only LoRA on the DiT's attention projections trains; the VAE, CLIP and DINOv2 stay frozen,
and their outputs are cached on disk (engine/families/midi/latents.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from engine.atomic import publish_folder
from engine.errors import CheckpointError, ProfileError
from engine.families.base import Family, MemoryDescription, StepOutput
from engine.families.midi.latents import FrozenParts, default_cache_dir

__all__ = ["MIDI_MI_BLOCKS", "MidiDataOptions", "MidiFamily", "MidiModelOptions", "resolve_mi_blocks"]

MIDI_MI_BLOCKS = [8, 9, 10, 11, 12]
"""MIDI-3D's multi-instance self-attention blocks (of 21)."""

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_TINY_NUM_LAYERS = 3


class MidiModelOptions(BaseModel):
    """The `model` keys the midi family adds."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
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
    logit_mean: float = Field(default=0.0, description="Mean of the logit-normal sigma density.")
    logit_std: float = Field(default=1.0, gt=0.0, description="Std of the logit-normal sigma density.")
    frozen_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="Dtype of the frozen VAE, CLIP and DINOv2 (fp16/bf16 halve their memory)."
    )
    dit_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="Dtype of the frozen DiT base weights; LoRA weights stay fp32."
    )
    tiny_seed: int = Field(default=0, ge=0, description="Seed of the tiny random base used when `model.pretrained` is empty.")


class MidiDataOptions(BaseModel):
    """The `data` keys the midi family adds."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    num_samples: int | None = Field(
        default=None, ge=16, description="Surface points per instance fed to the VAE; empty = all prepared points."
    )
    enable_latent_cache: bool = Field(
        default=True, description="Cache the frozen VAE posteriors and image tokens on disk (false: encode every step)."
    )
    cache_dir: Path | None = Field(default=None, description="Latent cache folder; empty = $LORA3D_CACHE/midi-latents.")
    val_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of scenes held out (last by name) when there is no val split."
    )
    eval_sigmas: list[float] = Field(
        default=[0.1, 0.3, 0.5, 0.7, 0.9], description="Noise levels of the validation loss (fixed noise)."
    )
    eval_chamfer_every: int = Field(
        default=1, ge=0, description="Generate scenes and score Chamfer every N-th evaluation; 0 = never."
    )
    eval_chamfer_scenes: int = Field(default=2, ge=1, description="Validation scenes generated for Chamfer.")
    eval_sample_steps: int = Field(default=10, ge=1, description="Sampling steps of the Chamfer generation.")
    eval_guidance_scale: float = Field(default=3.0, ge=0.0, description="CFG scale of the Chamfer generation.")
    eval_octree_resolution: int = Field(default=48, ge=8, le=512, description="Marching-cubes grid cells per axis.")
    synthetic_domain: Literal["A", "B"] = Field(default="B", description="Synthetic scenes when `data.root` is empty.")
    synthetic_train_scenes: int = Field(default=8, ge=1)
    synthetic_val_scenes: int = Field(default=4, ge=0)
    synthetic_seed: int = Field(default=0, ge=0)
    synthetic_image_size: int = Field(default=64, ge=16)
    synthetic_num_samples: int = Field(default=2048, ge=64)


def resolve_mi_blocks(mi_blocks: list[int] | None, num_layers: int) -> list[int]:
    """The multi-instance blocks for a model of `num_layers` blocks (see `MidiModelOptions.mi_blocks`)."""
    if mi_blocks is not None:
        return list(mi_blocks)
    return list(MIDI_MI_BLOCKS) if num_layers > max(MIDI_MI_BLOCKS) else [num_layers // 2]


def _transformer_config(pretrained: Path | None) -> dict[str, Any] | None:
    if pretrained is None:
        return {"num_layers": _TINY_NUM_LAYERS, "use_cross_attention_2": True}
    path = Path(pretrained) / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if config.get("use_cross_attention_2") is None:
        config["use_cross_attention_2"] = config.get("cross_attention_2_dim") is not None
    return config


def _inject_dit_lora(
    model: nn.Module,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    blocks: list[int] | None,
    attention_kinds: list[str],
    target_modules: list[str] | None = None,
) -> nn.Module:
    """`inject_lora_to_dit`, minus the CLIP cross-attention's `to_q` of a MIDI model.

    MIDI's CLIP condition is one token, and attention over a single key ignores the query (the softmax of
    one score is 1), so a LoRA on `attn2.to_q` would never receive a gradient; it is left out and
    recorded under `skipped`.
    """
    from engine.lora import DIT_PROJECTIONS, build_lora_config, inject_lora_layers, resolve_dit_targets

    modules = list(target_modules or DIT_PROJECTIONS)
    names = list(resolve_dit_targets(model, blocks, attention_kinds, modules))
    skipped = []
    if model.config.use_cross_attention_2:
        skipped = [n for n in names if n.endswith("attn2.to_q")]
        names = [n for n in names if n not in skipped]
    if not names:
        raise ProfileError(
            f"`lora.target_modules`: nothing left to adapt, got {modules} on {attention_kinds}. The CLIP "
            "cross-attention's `to_q` has no effect (one key token); add `to_k`, `to_v` or `to_out.0`."
        )
    config = build_lora_config(names, r, lora_alpha, lora_dropout)
    record = {"family": "dit", "r": r, "lora_alpha": lora_alpha, "lora_dropout": float(lora_dropout),
              "blocks": list(blocks) if blocks is not None else None, "attention_kinds": list(attention_kinds),
              "target_modules": modules, "enable_prompt": False, "skipped": skipped}
    return inject_lora_layers(model, config, "default", record)


def tiny_base_folder(seed: int) -> Path:
    """A tiny random MIDI pipeline under $LORA3D_CACHE (written once), the base when `model.pretrained` is empty."""
    from engine.models.dit.pipeline import build_tiny_pipeline

    folder = default_cache_dir() / f"midi-tiny-random-{seed}"
    if not (folder / "model_index.json").is_file():
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
        build_tiny_pipeline(tmp, seed=seed)
        publish_folder(tmp, folder)
    return folder


class MidiFamily(Family):
    name = "midi"
    tasks = ("flow",)
    default_task = "flow"
    presets = ("midi_default", "mi_blocks", "self_only")
    primary_metric = "val_loss"
    greater_is_better = False
    model_options = MidiModelOptions
    data_options = MidiDataOptions

    def __init__(self) -> None:
        self._frozen: FrozenParts | None = None
        self._eval_count = 0

    # ------------------------------------------------------------------ profile
    def check_profile(self, profile) -> list[str]:
        errors: list[str] = []
        model, lora = profile.model, profile.lora
        if model.task not in (None, "flow"):
            errors.append(f"`model.task` must be `flow` for the midi family, got {model.task!r}. Set `model.task: flow`.")
        config = _transformer_config(model.pretrained)
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
            from engine.lora import DIT_PROJECTIONS

            bad = [m for m in lora.target_modules if m not in DIT_PROJECTIONS]
            if bad or not lora.target_modules:
                errors.append(f"`lora.target_modules` for the DiT must be a subset of {list(DIT_PROJECTIONS)}, got {lora.target_modules}.")
        if lora.preset is not None and lora.preset not in self.presets:
            errors.append(f"`lora.preset` unknown for midi, got {lora.preset!r}. Use one of {list(self.presets)}.")
        if lora.enable_prompt:
            errors.append("`lora.enable_prompt` is a PTv3 (PointLoRA) option, got true. Set it to false for midi.")
        return errors

    # ------------------------------------------------------------------ model
    def _pretrained(self, profile) -> Path:
        return Path(profile.model.pretrained) if profile.model.pretrained else tiny_base_folder(profile.model.tiny_seed)

    def load_frozen(self, profile) -> FrozenParts:
        """The frozen VAE and encoders of the profile's base (loaded once per family object)."""
        if self._frozen is None:
            self.build_model(profile)
        assert self._frozen is not None
        return self._frozen

    def build_model(self, profile) -> nn.Module:
        from engine.models.dit.pipeline import load_pipeline

        options = profile.model
        pipe = load_pipeline(self._pretrained(profile), dtype=torch.float32)
        dit = pipe.transformer
        dit.set_multi_instance_attention(resolve_mi_blocks(options.mi_blocks, len(dit.blocks)))
        nn.Module.to(dit, _DTYPES[options.dit_dtype])
        frozen_dtype = _DTYPES[options.frozen_dtype]
        for module in (pipe.vae, pipe.clip, pipe.dino):
            if module is not None:
                module.requires_grad_(False).eval()
                nn.Module.to(module, frozen_dtype)
        dit.requires_grad_(False)
        frozen = FrozenParts(
            vae=pipe.vae, dino=pipe.dino, clip=pipe.clip, dino_preprocessor=pipe.dino_preprocessor,
            clip_preprocessor=pipe.clip_preprocessor, kind=pipe.kind, folder=pipe.folder,
        )
        dit.midi_frozen = frozen  # a plain attribute: not in the state dict, not in the adapter
        dit.midi_num_tokens = options.num_tokens
        self._frozen = frozen
        return dit

    def inject_lora(self, model: nn.Module, profile) -> nn.Module:
        from engine.lora import get_preset, mark_only_lora_as_trainable

        lora = profile.lora
        kinds = ["self", "cross", "cross2"] if model.config.use_cross_attention_2 else ["self", "cross"]
        kwargs: dict[str, Any] = {"r": lora.r, "lora_alpha": lora.alpha or lora.r, "lora_dropout": lora.dropout,
                                  "blocks": lora.target_blocks, "attention_kinds": kinds}
        if lora.preset is not None:
            preset = get_preset(lora.preset).resolve(model)
            explicit = lora.model_fields_set
            kwargs = {**kwargs, **preset}
            for key, name in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"), ("blocks", "target_blocks")):
                if name in explicit:
                    kwargs[key] = getattr(lora, name) if name != "alpha" else (lora.alpha or lora.r)
            kwargs["attention_kinds"] = [k for k in kwargs["attention_kinds"] if k in kinds]
        if lora.attention_kinds is not None:
            kwargs["attention_kinds"] = list(lora.attention_kinds)
        if lora.target_modules is not None:
            kwargs["target_modules"] = list(lora.target_modules)
        return mark_only_lora_as_trainable(_inject_dit_lora(model, **kwargs))

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        if enabled:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ data
    def scene_folders(self, profile) -> tuple[list[Path], list[Path]]:
        """Train and validation scene folders: `data.root`, or the synthetic scenes when it is empty."""
        from engine.families.midi.data import split_scene_folders

        data = profile.data
        if data.root is None:
            from engine.families.midi.data import synthetic_prepared_scenes

            return synthetic_prepared_scenes(
                domain=data.synthetic_domain, num_train=data.synthetic_train_scenes, num_val=data.synthetic_val_scenes,
                seed=data.synthetic_seed, image_size=data.synthetic_image_size, num_samples=data.synthetic_num_samples,
            )
        return split_scene_folders(Path(data.root), data.train_split, data.val_split, data.val_fraction)

    def cache_dir(self, profile) -> Path | None:
        data = profile.data
        if not data.enable_latent_cache:
            return None
        return Path(data.cache_dir) if data.cache_dir else default_cache_dir() / "midi-latents"

    def build_datasets(self, profile):
        from engine.families.midi.data import MidiSceneDataset

        train_folders, val_folders = self.scene_folders(profile)
        frozen = self.load_frozen(profile)
        common = {
            "slots": profile.model.num_instances_per_batch, "seed": profile.train.seed, "frozen": frozen,
            "cache_dir": self.cache_dir(profile), "num_tokens": profile.model.num_tokens,
            "num_samples": profile.data.num_samples, "on_error": profile.data.on_error,
        }
        train = MidiSceneDataset(train_folders, **common)
        val = MidiSceneDataset(val_folders, keep_gt=True, **common) if val_folders else None
        return train, val

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        from engine.families.midi.data import collate_scenes

        return collate_scenes(samples)

    def data_check(self, profile):
        from engine.families.midi.data import scan_scenes

        train, val = self.scene_folders(profile)
        return scan_scenes(str(profile.data.root or "built-in synthetic scenes"), {"train": train, "val": val},
                           profile.model.num_instances_per_batch, profile.data.num_samples)

    # ------------------------------------------------------------------ task
    def training_step(self, model: nn.Module, batch: dict[str, Any], profile) -> StepOutput:
        from engine.families.midi.task import flow_loss

        options = profile.model
        loss, metrics = flow_loss(model, batch, options.num_tokens, options.cfg_dropout, options.logit_mean,
                                  options.logit_std, options.weighting)
        real = int(batch["real"].sum())
        return StepOutput(loss=loss, metrics=metrics, num_samples=real, num_tokens=real * options.num_tokens)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, profile) -> dict[str, float]:
        from engine.families.midi.task import evaluate_scenes

        self._eval_count += 1
        every = profile.data.eval_chamfer_every
        chamfer = every > 0 and (self._eval_count - 1) % every == 0
        return evaluate_scenes(model, batches, profile, with_chamfer=chamfer)

    def describe_memory(self, profile) -> MemoryDescription:
        from engine.families.midi.memory import describe_memory

        return describe_memory(profile)

    # ------------------------------------------------------------------ adapters
    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        from engine.lora import save_lora_checkpoint

        inner = getattr(model, "module", model)
        extra = {"mi_blocks": inner.multi_instance_blocks, "num_tokens": getattr(inner, "midi_num_tokens", None)}
        save_lora_checkpoint(inner, folder, metadata={**metadata, **extra})

    def merge_adapter(self, profile, adapter: Path, out: Path) -> Path:
        """Folds the adapter into the DiT; writes a diffusers `transformer/` folder, `.safetensors` or `.pth`."""
        from safetensors.torch import save_file

        from engine.lora import load_lora_checkpoint, merge_lora_weights

        model = self.build_model(profile)
        load_lora_checkpoint(model, adapter)
        merge_lora_weights(model)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        out = Path(out)
        suffix = out.suffix.lower()
        if suffix in (".safetensors", ".pth", ".pt"):
            out.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".safetensors":
                save_file(state, str(out), metadata={"format": "pt", "config": json.dumps(dict(model.config))})
            else:
                torch.save(state, out)
            return out
        if suffix:
            raise CheckpointError(
                f"{out}: unknown merged-checkpoint type, got suffix {suffix!r}. Use a folder, `.safetensors` or `.pth`."
            )
        model.save_pretrained(out, safe_serialization=True)
        return out

    def identity(self, model: nn.Module, profile) -> dict[str, Any]:
        identity = super().identity(model, profile)
        identity["midi"] = {"mi_blocks": getattr(model, "multi_instance_blocks", None),
                            "num_tokens": profile.model.num_tokens, "slots": profile.model.num_instances_per_batch}
        return identity


def check_options(profile) -> None:
    """Raises ProfileError with every problem `MidiFamily.check_profile` finds (for code outside the loader)."""
    errors = MidiFamily().check_profile(profile)
    if errors:
        raise ProfileError("\n".join(errors))
