"""Provides `SceneSplatFamily`: PTv3 over 3D Gaussian splats, tasks `semseg` and `lang`, as a lora3d family.

The family's keys and their resolution are in `options`, the task strategies in `task`, the datasets in
`datasets`, adapter I/O (LoRA + segmentation head) in `adapters`, the memory description in `memory`, the
data check in `datacheck` and the built-in demo in `demo`. With an empty `data.root` the family trains on
the built-in synthetic rooms (engine.families.scenesplat.synthetic), generated in memory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.cache import cache_root
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
from engine.families.scenesplat import adapters, datacheck, datasets, preview
from engine.families.scenesplat.data import collate_scenes
from engine.families.scenesplat.memory import describe_memory, inference_memory
from engine.families.scenesplat.options import (
    DEMO_TINY_CONFIG,
    SceneSplatDataOptions,
    SceneSplatLoraOptions,
    SceneSplatModelOptions,
    backbone_config,
    check_profile,
    resolve_options,
    stage_layout,
)
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES
from engine.families.scenesplat.task import LangTask, SemsegTask
from engine.lora import PTV3_PRESETS, merge_lora_weights
from engine.lora.spec import LoraSpec, PTv3Stages, tuple_or_none
from engine.models.ptv3 import PTv3LanguageModel, PTv3Segmentor, freeze_batch_norm, load_base_weights
from engine.models.ptv3.checkpoint import save_ptv3_checkpoint
from engine.profile import Profile

_REPO = Path(__file__).resolve().parents[3]

DEMO_BASE_SETTINGS: dict[str, Any] = {
    "domain": "A",
    "scenes": 12,
    "num_points": 2500,
    "grid_size": 0.05,
    "steps": 90,
    "batch_size": 2,
    "lr": 0.004,
    "seed": 0,
}
"""How the demo's tiny base is pretrained (every parameter, on synthetic rooms A); its cache key hashes these."""


def demo_base_profile(settings: dict[str, Any], family: str = "scenesplat") -> dict[str, Any]:
    """The profile of the run that pretrains the demo's base: full training of a demo-tiny segmentor on rooms A.

    `family`: the PTv3 family whose demo it is (Sonata's demo base is pretrained the same way)."""
    return {
        "schema_version": 1,
        "name": f"demo-{family}-base",
        "model": {"family": family, "task": "semseg", "backbone": "demo-tiny"},
        "lora": {"method": "full"},
        "data": {"grid_size": settings["grid_size"], "synthetic_domain": settings["domain"],
                 "synthetic_train": settings["scenes"], "synthetic_val": 0, "synthetic_points": settings["num_points"],
                 "synthetic_seed": settings["seed"], "val_split": None},
        "train": {"max_steps": settings["steps"], "batch_size": settings["batch_size"], "lr": settings["lr"],
                  "warmup_steps": max(1, settings["steps"] // 10), "seed": settings["seed"], "device": "cpu",
                  "max_grad_norm": None},
        "previews": {"enabled": False},  # a cached prerequisite: nobody looks at its run directory
    }


def demo_base_path(settings: dict[str, Any], family: str = "scenesplat") -> Path:
    """Where `family`'s demo base pretrained with `settings` is cached."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / f"{family}-demo-base-{key}.pth"


def export_base(model: nn.Module, recipe: Recipe, path: Path) -> None:
    """Writes a trained segmentor as Pointcept's trainer does: `{"epoch", "state_dict"}` (weights_only loads it)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"epoch": recipe.profile.train.max_steps, "state_dict": state}, path)


def demo_base_prerequisite(settings: dict[str, Any], family: str = "scenesplat") -> Prerequisite:
    """`family`'s demo base pretrained with `settings`, as a prerequisite the Trainer builds once and caches."""
    return Prerequisite(demo_base_path(settings, family), demo_base_profile(settings, family), export_base,
                        f"the {family} demo's tiny base (every parameter trained on synthetic rooms A)")


class SceneSplatFamily(Family):
    """SceneSplat's PTv3 over Gaussian splats: semantic segmentation or language-feature distillation."""

    name = "scenesplat"
    label = "SceneSplat: Point Transformer V3 (PT-v3m1) over 3D Gaussian splats"
    tasks = ("semseg", "lang")
    default_task = "semseg"
    model_options = SceneSplatModelOptions
    data_options = SceneSplatDataOptions
    lora_options = SceneSplatLoraOptions
    presets = PTV3_PRESETS
    demo = "engine.families.scenesplat.demo:run_demo"
    wizard = WizardSpec(
        description="Point Transformer V3 (PT-v3m1) backbone, Pointcept/SceneSplat checkpoint layout; "
        "segmentation head (semseg) or language features (lang). LoRA on attention (+ MLP) per stage.",
        new_profile={"model": {"family": "scenesplat", "task": "semseg"}, "lora": {"target_modules": ["attn"]}},
        pretrained_hint="e.g. ~/models/scenesplat/model_best.pth",
        demo_profile=_REPO / "profiles" / "demo-scenesplat.yaml",
        demo_label="Built-in demo (SceneSplat, synthetic rooms, tiny base; runs on a CPU)",
        order=0,  # the wizard's default: its demo pretrains a real tiny base (Enter on every screen runs it)
    )

    # ---------------------------------------------------------------- profile -> recipe
    def preset_context(self, profile: Profile) -> Any:
        return stage_layout(backbone_config(profile.model.backbone))

    def check(self, profile: Profile) -> list[str]:
        return check_profile(profile)

    def build_recipe(self, profile: Profile, notes: list[str], source: str) -> Recipe:
        model, lora = profile.model, profile.lora
        pretrained = model.pretrained
        if pretrained is None and model.demo_base:
            pretrained = demo_base_path(DEMO_BASE_SETTINGS)
        options = resolve_options(profile, pretrained)
        if pretrained is None:
            notes.append("`model.pretrained` is empty: the base is randomly initialised (smoke tests only)")
        if options.task == "semseg":
            task: Any = SemsegTask(options.class_names, model.ignore_index, tuple(model.fg_exclude))
        else:
            task = LangTask(options.output_width, options.text_embeddings, options.class_names, model.ignore_index,
                            model.cos_weight, model.l2_weight, model.contrastive_weight, model.contrastive_temperature,
                            model.contrastive_min_points, model.zero_shot_threshold, tuple(model.fg_exclude))
        head = ("seg_head",) if options.task == "semseg" and model.train_head else ()
        spec = LoraSpec(
            method=lora.method, r=lora.r, alpha=lora.alpha or lora.r, dropout=lora.dropout,
            targets=PTv3Stages(tuple(lora.target_modules or ["attn"]), lora.encoder_only,
                               tuple_or_none(lora.target_stages)),
            enable_prompt=lora.enable_prompt, trainable_modules=head, preset=lora.preset,
        )
        return Recipe(self, profile, task, spec, options, tuple(notes), source)

    # ---------------------------------------------------------------- model
    def prerequisites(self, recipe: Recipe) -> list[Prerequisite]:
        model = recipe.profile.model
        if model.pretrained is not None or not model.demo_base:
            return []
        return [demo_base_prerequisite(DEMO_BASE_SETTINGS)]

    def build_model(self, recipe: Recipe) -> nn.Module:
        options = recipe.options
        if options.task == "semseg":
            model: nn.Module = PTv3Segmentor(options.backbone, options.num_classes)
        else:
            model = PTv3LanguageModel(options.backbone)
        if options.pretrained is not None:
            if not Path(options.pretrained).exists():
                raise CheckpointError(
                    f"{options.pretrained}: the base checkpoint is missing. Point `model.pretrained` at it, or run "
                    "the recipe through `lora3d train` (it builds the demo base on first use)."
                )
            model.lora3d_base = load_base_weights(model, options.pretrained)
            model.lora3d_notes = list(model.lora3d_base["notes"])
        model.requires_grad_(False)
        freeze_batch_norm(model)
        return model

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        if enabled:
            model.backbone.gradient_checkpointing_enable()
        else:
            model.backbone.gradient_checkpointing_disable()

    # ---------------------------------------------------------------- data
    def build_datasets(self, recipe: Recipe):
        options = recipe.options
        lang = options.task == "lang"
        return datasets.build_datasets(recipe.profile, options.output_width if lang else None,
                                       None if lang else options.num_classes)

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        return collate_scenes(samples)

    def data_check(self, recipe: Recipe) -> Any:
        options = recipe.options
        semseg = options.task == "semseg"
        return datacheck.check_data(recipe.profile, options.num_classes if semseg else None,
                                    list(options.class_names or SYNTHETIC_CLASSES),
                                    None if semseg else options.output_width)

    def describe_memory(self, recipe: Recipe) -> MemoryDescription:
        return describe_memory(recipe)

    # ---------------------------------------------------------------- previews
    def preview_items(self, recipe: Recipe, train_ds: Any, val_ds: Any) -> list[PreviewItem]:
        return preview.preview_items(recipe, train_ds, val_ds)

    def preview(self, recipe: Recipe, model: nn.Module, item: PreviewItem, folder: Path, seed: int,
                step: int) -> PreviewFiles:
        return preview.draw_preview(recipe, model, item, folder, seed, step)

    def preview_data(self, recipe: Recipe, folder: Path) -> list[Path]:
        return preview.draw_data_preview(recipe, folder)

    def inference_memory(self, recipe: Recipe, tokens: int, scene_tokens: int | None = None,
                         device: str = "cpu") -> dict[str, int]:
        return inference_memory(recipe, device_type=device, points=tokens, scene_points=scene_tokens)

    # ---------------------------------------------------------------- adapters
    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        adapters.save_adapter(model, folder, metadata)

    def merge_adapter(self, recipe: Recipe, adapter: Path, out: Path, bare: bool = False) -> Path:
        """Writes base + adapter as one checkpoint with Pointcept's key names.

        `.pth`/`.pt`: Pointcept's layout `{"epoch", "state_dict"}` (SceneSplat's tester reads it), or the
        state dict alone with `bare` (both tensors only, `weights_only=True` loads them);
        `.safetensors`: the same tensors; a folder or a name without suffix: `<out>/model.pth`.
        Keys are `backbone.*` (+ `seg_head.*` for semseg), so `PTv3Segmentor` / `PTv3LanguageModel`
        load it strictly and `load_pretrained` loads it into a bare backbone.

        Raises:
            CheckpointError: the adapter has PointLoRA prompt MLPs (they cannot be folded into weights).
        """
        out = Path(out)
        if out.suffix not in (".pth", ".pt", ".safetensors"):
            out = out / "model.pth"
        model = self.build_model(recipe)
        adapters.load_adapter(model, adapter)
        merge_lora_weights(model)
        if getattr(model, "lora3d_merged", {}).get("prompt_keys"):
            raise CheckpointError(
                f"{adapter}: the adapter has PointLoRA prompt MLPs, which cannot be folded into the base weights, "
                "got `lora.enable_prompt: true`. Deploy base + adapter (`load_adapter`) instead of a merged file."
            )
        return save_ptv3_checkpoint(model.state_dict(), out, bare=bare, info={"merged_adapter": str(adapter)})


__all__ = ["DEMO_BASE_SETTINGS", "DEMO_TINY_CONFIG", "SceneSplatFamily", "demo_base_path", "demo_base_prerequisite",
           "demo_base_profile", "export_base"]
