"""Provides MidiFamily: LoRA fine-tuning of the MIDI-3D / TripoSG rectified-flow DiT as a lora3d family plugin.

The base is a local MIDI-3D or TripoSG pipeline folder (`model.pretrained`, loaded by
`engine.models.dit.pipeline.load_pipeline`); an empty `model.pretrained` uses the demo's tiny pretrained
base with `model.demo_base` (built by two training runs, `demo_base`), else a tiny random pipeline (smoke
tests). Only LoRA on the DiT's attention projections trains; the VAE, CLIP and DINOv2 stay frozen, and
their outputs are cached on disk (engine/families/midi/latents.py). The family's keys are in `options`,
the objectives and evaluation in `task` (`flow`) and `demo_vae` (`vae`: the demo's VAE pretraining), the
memory description in `memory`.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from engine.atomic import atomic_file, atomic_folder, publish_folder
from engine.errors import CheckpointError
from engine.families.base import (
    Family,
    MemoryDescription,
    Prerequisite,
    PreviewFiles,
    PreviewItem,
    Recipe,
    WizardSpec,
)
from engine.families.midi import preview
from engine.families.midi.data import (
    MidiSceneDataset,
    collate_scenes,
    scan_scenes,
    split_scene_folders,
    synthetic_prepared_scenes,
)
from engine.families.midi.demo_base import base_prerequisites
from engine.families.midi.demo_vae import (
    ShapeSample,
    VaeTask,
    collate_shapes,
    describe_vae_memory,
    load_vae,
    vae_datasets,
)
from engine.families.midi.latents import FrozenParts
from engine.families.midi.memory import describe_memory
from engine.families.midi.options import (
    DEMO_BASE_SETTINGS,
    MIDI_MI_BLOCKS,
    MidiDataOptions,
    MidiLoraOptions,
    MidiModelOptions,
    MidiPreviewOptions,
    check_profile,
    model_kinds,
    resolve_mi_blocks,
    resolve_options,
    transformer_config,
)
from engine.families.midi.task import EvalSettings, FlowTask
from engine.lora import DIT_PRESETS, load_lora_checkpoint, merge_lora_weights, save_lora_checkpoint
from engine.lora.spec import DiTAttention, LoraSpec, tuple_or_none
from engine.models.dit.pipeline import build_tiny_pipeline, load_pipeline
from engine.profile import Profile

__all__ = ["MIDI_MI_BLOCKS", "MidiDataOptions", "MidiFamily", "MidiModelOptions", "resolve_mi_blocks"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_REPO = Path(__file__).resolve().parents[3]

def ensure_tiny_base(folder: Path, seed: int) -> Path:
    """The tiny random MIDI pipeline (written once under $LORA3D_CACHE), the base when `model.pretrained` is empty."""
    if not (folder / "model_index.json").is_file():
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
        build_tiny_pipeline(tmp, seed=seed)
        publish_folder(tmp, folder)
    return folder


class MidiFamily(Family):
    name = "midi"
    label = "MIDI-3D: rectified-flow DiT (TripoSG) for multi-instance 3D scenes"
    tasks = ("flow", "vae")
    default_task = "flow"
    model_options = MidiModelOptions
    data_options = MidiDataOptions
    lora_options = MidiLoraOptions
    preview_options = MidiPreviewOptions
    presets = DIT_PRESETS
    demo = "engine.families.midi.demo:run_demo"
    # The Chamfer evaluation's settings: how the run is judged, not what it trains on.
    identity_ignores = frozenset(f"data.{key}" for key in MidiDataOptions.model_fields if key.startswith("eval_"))
    wizard = WizardSpec(
        description="MIDI-3D / TripoSG rectified-flow DiT (diffusers folder), CLIP + DINOv2 conditioning; "
        "LoRA on the attention projections of chosen blocks. VAE and encoders stay frozen (latents cached).",
        new_profile={"model": {"family": "midi", "task": "flow"},
                     "lora": {"target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}},
        pretrained_hint="e.g. ~/models/MIDI-3D (the folder with model_index.json)",
        demo_profile=_REPO / "profiles" / "demo-midi.yaml",
        demo_label="Built-in demo (MIDI-3D, synthetic scenes, tiny base; runs on a CPU)",
    )

    # ------------------------------------------------------------------ profile -> recipe
    def preset_context(self, profile: Profile) -> Any:
        return model_kinds(transformer_config(profile.model.pretrained) or {})

    def check(self, profile: Profile) -> list[str]:
        return check_profile(profile)

    def build_recipe(self, profile: Profile, notes: list[str], source: str) -> Recipe:
        options = resolve_options(profile)
        model, data, lora = profile.model, profile.data, profile.lora
        if model.pretrained is None and not model.demo_base:
            notes.append("`model.pretrained` is empty: the base is a tiny random pipeline (smoke tests only)")
        evaluation = EvalSettings(profile.train.seed, tuple(data.eval_sigmas), data.eval_chamfer_scenes,
                                  data.eval_sample_steps, data.eval_guidance_scale, data.eval_octree_resolution)
        task: Any = FlowTask(model.num_tokens, model.cfg_dropout, model.logit_mean, model.logit_std, model.weighting,
                             evaluation, data.eval_chamfer_every)
        if model.task == "vae":
            task = VaeTask(model.num_tokens)
        spec = LoraSpec(
            method=lora.method, r=lora.r, alpha=lora.alpha or lora.r, dropout=lora.dropout,
            targets=DiTAttention(tuple_or_none(lora.target_blocks), options.attention_kinds,
                                 tuple(lora.target_modules or ("to_q", "to_k", "to_v", "to_out.0")),
                                 # MIDI's CLIP condition is one token: a LoRA on its query would never learn.
                                 skip_single_key_queries=bool(options.transformer.get("use_cross_attention_2"))),
            preset=lora.preset,
        )
        return Recipe(self, profile, task, spec, options, tuple(notes), source)

    # ------------------------------------------------------------------ model
    def prerequisites(self, recipe: Recipe) -> list[Prerequisite]:
        model = recipe.profile.model
        if model.pretrained is not None or not model.demo_base:
            return []
        return base_prerequisites(DEMO_BASE_SETTINGS)

    def load_frozen(self, recipe: Recipe) -> FrozenParts:
        """The frozen VAE and encoders of the recipe's base (loaded once per recipe)."""
        if not recipe.options.frozen:
            self.build_model(recipe)
        return recipe.options.frozen[0]

    def build_model(self, recipe: Recipe) -> nn.Module:
        options, model_options = recipe.options, recipe.profile.model
        folder = options.pretrained
        if model_options.pretrained is None and model_options.demo_base and not folder.is_dir():
            raise CheckpointError(f"{folder}: the demo base is missing. Run the profile through `lora3d train` or "
                                  "`lora3d demo midi` (they build it on first use), or set `model.pretrained`.")
        if model_options.pretrained is None and not model_options.demo_base:
            ensure_tiny_base(folder, model_options.tiny_seed)
        if model_options.task == "vae":
            return load_vae(folder)
        pipe = load_pipeline(folder, dtype=torch.float32)
        dit = pipe.transformer
        dit.set_multi_instance_attention(list(options.mi_blocks))
        nn.Module.to(dit, _DTYPES[model_options.dit_dtype])
        dit.requires_grad_(False)
        if not options.frozen:
            frozen_dtype = _DTYPES[model_options.frozen_dtype]
            for module in (pipe.vae, pipe.clip, pipe.dino):
                if module is not None:
                    module.requires_grad_(False).eval()
                    nn.Module.to(module, frozen_dtype)
            options.frozen.append(FrozenParts(
                vae=pipe.vae, dino=pipe.dino, clip=pipe.clip, dino_preprocessor=pipe.dino_preprocessor,
                clip_preprocessor=pipe.clip_preprocessor, kind=pipe.kind, folder=pipe.folder,
            ))
        dit.midi_frozen = options.frozen[0]  # a plain attribute: not in the state dict, not in the adapter
        dit.midi_num_tokens = model_options.num_tokens
        return dit

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        if enabled:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ data
    def scene_folders(self, recipe: Recipe) -> tuple[list[Path], list[Path]]:
        """Train and validation scene folders: `data.root`, or the synthetic scenes when it is empty."""
        data = recipe.profile.data
        if data.root is None:
            return synthetic_prepared_scenes(
                domain=data.synthetic_domain, num_train=data.synthetic_train_scenes, num_val=data.synthetic_val_scenes,
                seed=data.synthetic_seed, image_size=data.synthetic_image_size, num_samples=data.synthetic_num_samples,
            )
        return split_scene_folders(Path(data.root), data.train_split, data.val_split, data.val_fraction)

    def build_datasets(self, recipe: Recipe):
        profile = recipe.profile
        if profile.model.task == "vae":
            return vae_datasets(recipe)
        train_folders, val_folders = self.scene_folders(recipe)
        common = {
            "slots": profile.model.num_instances_per_batch, "seed": profile.train.seed,
            "frozen": self.load_frozen(recipe), "cache_dir": recipe.options.cache_dir,
            "num_tokens": profile.model.num_tokens, "num_samples": profile.data.num_samples,
            "on_error": profile.data.on_error,
        }
        train = MidiSceneDataset(train_folders, **common)
        val = MidiSceneDataset(val_folders, keep_gt=True, **common) if val_folders else None
        return train, val

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        return collate_shapes(samples) if isinstance(samples[0], ShapeSample) else collate_scenes(samples)

    def data_check(self, recipe: Recipe):
        profile = recipe.profile
        train, val = self.scene_folders(recipe)
        return scan_scenes(str(profile.data.root or "built-in synthetic scenes"), {"train": train, "val": val},
                           profile.model.num_instances_per_batch, profile.data.num_samples)

    def describe_memory(self, recipe: Recipe) -> MemoryDescription:
        return describe_vae_memory(recipe) if recipe.profile.model.task == "vae" else describe_memory(recipe)

    # ------------------------------------------------------------------ previews
    def preview_items(self, recipe: Recipe, train_ds: Any, val_ds: Any) -> list[PreviewItem]:
        return preview.preview_items(recipe, train_ds, val_ds)

    def preview(self, recipe: Recipe, model: nn.Module, item: PreviewItem, folder: Path, seed: int,
                step: int) -> PreviewFiles:
        return preview.draw_preview(recipe, model, item, folder, seed, step)

    def preview_data(self, recipe: Recipe, folder: Path) -> list[Path]:
        return preview.draw_data_preview(recipe, folder)

    def identity(self, recipe: Recipe, model: nn.Module) -> dict[str, Any]:
        # What the build resolved (the profile's `mi_blocks` may be empty = MIDI's default for this depth).
        return {"mi_blocks": list(getattr(model, "multi_instance_blocks", recipe.options.mi_blocks))}

    # ------------------------------------------------------------------ adapters
    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        inner = getattr(model, "module", model)
        extra = {"mi_blocks": inner.multi_instance_blocks, "num_tokens": getattr(inner, "midi_num_tokens", None)}
        save_lora_checkpoint(inner, folder, metadata={**metadata, **extra})

    def merge_adapter(self, recipe: Recipe, adapter: Path, out: Path, bare: bool = False) -> Path:
        """Folds the adapter into the DiT; writes a diffusers `transformer/` folder, `.safetensors` or `.pth`."""
        if bare:
            raise CheckpointError(
                f"`--bare`: a merged DiT has no wrapper to leave out, got {out}. Drop --bare (the `.pth` is a bare "
                "state dict already; a folder is diffusers' `transformer/` layout)."
            )
        model = self.build_model(recipe)
        load_lora_checkpoint(model, adapter)
        merge_lora_weights(model)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        out = Path(out)
        suffix = out.suffix.lower()
        if suffix in (".safetensors", ".pth", ".pt"):
            with atomic_file(out) as tmp:
                if suffix == ".safetensors":
                    save_file(state, str(tmp), metadata={"format": "pt", "config": json.dumps(dict(model.config))})
                else:
                    torch.save(state, tmp)
            return out
        if suffix:
            raise CheckpointError(
                f"{out}: unknown merged-checkpoint type, got suffix {suffix!r}. Use a folder, `.safetensors` or `.pth`."
            )
        with atomic_folder(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
        return out
