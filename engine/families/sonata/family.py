"""Provides `SonataFamily`: Pointcept's PT-v3m2 (Sonata, Concerto) semantic segmentation as a lora3d family.

The family's keys and their resolution are in `options`, the presets in `presets`, the task (Pointcept's
losses, the metrics) in `task`, the data in `data`/`transforms`/`datasets`, adapter I/O and Pointcept's
checkpoint layouts in `adapters`, the memory description in `memory`, the data check in `datacheck` and
the built-in demo in `demo`. With an empty `data.root` the family trains on the built-in synthetic rooms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

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
from engine.families.scenesplat.data import collate_scenes

# The demo base is pretrained as SceneSplat's is (a full Trainer run of a demo-tiny segmentor on rooms A).
from engine.families.scenesplat.family import demo_base_path, demo_base_prerequisite
from engine.families.sonata import ENTRY, adapters, datacheck, datasets, preview
from engine.families.sonata.memory import describe_memory
from engine.families.sonata.options import (
    SonataDataOptions,
    SonataLoraOptions,
    SonataModelOptions,
    check_profile,
    resolve_options,
)
from engine.families.sonata.presets import PRESETS
from engine.families.sonata.task import SonataSemsegTask
from engine.lora import merge_lora_weights
from engine.lora.spec import LoraSpec, PTv3Stages, tuple_or_none
from engine.models.ptv3.checkpoint import save_ptv3_checkpoint
from engine.models.sonata import SonataSegmentor, load_sonata_checkpoint
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

__all__ = ["DEMO_BASE_SETTINGS", "SonataFamily"]


class SonataFamily(Family):
    """Sonata / Concerto (PT-v3m2) semantic segmentation: LoRA, linear probing, decoder or full fine-tuning."""

    name = "sonata"
    label = ENTRY.label
    tasks = ("semseg",)
    default_task = "semseg"
    model_options = SonataModelOptions
    data_options = SonataDataOptions
    lora_options = SonataLoraOptions
    presets = PRESETS
    commands = ENTRY.commands
    demo = ENTRY.demo
    wizard = WizardSpec(
        description="Point Transformer V3 (PT-v3m2), the backbone of Sonata and Concerto, Pointcept checkpoint "
        "layouts (pretraining, segmentor, DefaultLORASegmentorV2); linear head on every encoder level "
        "concatenated, or a decoder. LoRA on the encoder's qkv as Pointcept fine-tunes it (preset pointcept-lora).",
        new_profile={"model": {"family": "sonata", "task": "semseg", "backbone": "sonata-base"},
                     "lora": {"preset": "pointcept-lora"}},
        pretrained_hint="e.g. ~/models/sonata/sonata.pth or exp/concerto/.../model/model_last.pth",
        demo_profile=_REPO / "profiles" / "sonata" / "demo.yaml",
        demo_label="Built-in demo (Sonata PT-v3m2, synthetic rooms, tiny base; runs on a CPU)",
    )

    # ---------------------------------------------------------------- profile -> recipe
    def check(self, profile: Profile) -> list[str]:
        return check_profile(profile)

    def build_recipe(self, profile: Profile, notes: list[str], source: str) -> Recipe:
        model, lora = profile.model, profile.lora
        pretrained = model.pretrained
        if pretrained is None and model.demo_base:
            pretrained = demo_base_path(DEMO_BASE_SETTINGS, "sonata")
        options = resolve_options(profile, pretrained)
        if pretrained is None:
            notes.append("`model.pretrained` is empty: the base is randomly initialised (smoke tests only)")
        task = SonataSemsegTask(options.class_names, options.losses, model.ignore_index, tuple(model.fg_exclude))
        if lora.method == "full":
            spec = LoraSpec(method="full", preset=lora.preset)
        else:
            if lora.target_modules is None:
                notes.append("`lora.target_modules` is empty: LoRA on every encoder `qkv`, as Pointcept's "
                             "DefaultLORASegmentorV2 (preset `pointcept-lora` also sets r 8, alpha 16, dropout 0.1)")
            groups = tuple(lora.target_modules if lora.target_modules is not None else ["qkv"])
            targets = PTv3Stages(groups, lora.encoder_only, tuple_or_none(lora.target_stages)) if groups else None
            if options.train_decoder:
                notes.append("the decoder trains in full with the head (`model.train_decoder`)")
            spec = LoraSpec(method="lora", r=lora.r, alpha=lora.alpha or lora.r, dropout=lora.dropout, targets=targets,
                            trainable_modules=options.trained_modules, preset=lora.preset)
        return Recipe(self, profile, task, spec, options, tuple(notes), source)

    # ---------------------------------------------------------------- model
    def prerequisites(self, recipe: Recipe) -> list[Prerequisite]:
        model = recipe.profile.model
        if model.pretrained is not None or not model.demo_base:
            return []
        return [demo_base_prerequisite(DEMO_BASE_SETTINGS, "sonata")]

    def build_model(self, recipe: Recipe) -> nn.Module:
        options = recipe.options
        model = SonataSegmentor(dict(options.backbone), options.num_classes)
        model.lora3d_notes = []
        if options.pretrained is not None:
            load_base(model, Path(options.pretrained), options.train_decoder, recipe.profile.model.checkpoint_prefix)
        model.requires_grad_(False)
        return model

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        if enabled:
            model.backbone.gradient_checkpointing_enable()
        else:
            model.backbone.gradient_checkpointing_disable()

    def identity(self, recipe: Recipe, model: nn.Module) -> dict[str, Any]:
        """What the build resolved: the head's width, what trains in full and the base checkpoint's layout."""
        options = recipe.options
        load = getattr(model, "lora3d_base", {})
        return {"enc_mode": options.enc_mode, "head_channels": options.head_channels,
                "trained_modules": list(options.trained_modules), "base_layout": load.get("layout"),
                "base_loaded": load.get("loaded")}

    # ---------------------------------------------------------------- data
    def build_datasets(self, recipe: Recipe):
        return datasets.build_datasets(recipe.profile)

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        return collate_scenes(samples)

    def data_check(self, recipe: Recipe) -> Any:
        options = recipe.options
        return datacheck.check_data(recipe.profile, options.num_classes, list(options.class_names))

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

    # ---------------------------------------------------------------- adapters
    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        adapters.save_adapter(model, folder, metadata)

    def load_adapted(self, recipe: Recipe, adapter: Path) -> nn.Module:
        """The recipe's model with a run's adapter (and trained head) loaded."""
        return adapters.load_adapter(self.build_model(recipe), adapter)

    def merge_adapter(self, recipe: Recipe, adapter: Path, out: Path, bare: bool = False) -> Path:
        """Writes base + adapter folded into one checkpoint in Pointcept's DefaultSegmentorV2 layout.

        `.pth`/`.pt`: `{"epoch", "state_dict"}` (Pointcept's tester reads it with a `DefaultSegmentorV2` config of
        the same backbone), or the state dict alone with `bare`; `.safetensors`: the same tensors; a folder or a
        name without suffix: `<out>/model.pth`. Keys are `backbone.*` and `seg_head.*`, so `SonataSegmentor`
        loads it strictly and `load_sonata_checkpoint` loads it into a bare backbone.
        """
        out = Path(out)
        if out.suffix not in (".pth", ".pt", ".safetensors"):
            out = out / "model.pth"
        model = self.load_adapted(recipe, adapter)
        merge_lora_weights(model)
        return save_ptv3_checkpoint(model.state_dict(), out, bare=bare, info={"merged_adapter": str(adapter)})


def load_base(model: SonataSegmentor, path: Path, train_decoder: bool, prefix: str | None = None) -> None:
    """Loads a base checkpoint into the segmentor, allowing only what the run trains anew.

    A decoder the checkpoint lacks (a pretraining checkpoint) may stay at its initialisation when it trains;
    a head of another class count keeps its initialisation; a LoRA checkpoint's adapter is set aside (the
    base and head load). Everything kept or skipped becomes a note (`model.lora3d_notes`).

    Raises:
        CheckpointError: the file is missing or unreadable, or any other key is missing, unexpected or mis-shaped.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: the base checkpoint is missing. Point `model.pretrained` at it, or run "
                              "the recipe through `lora3d train` (it builds the demo base on first use).")
    report = load_sonata_checkpoint(model, path, strict=False, prefix=prefix, skip_lora=True)
    fresh_decoder = [k for k in report.missing if k.startswith("backbone.dec.")] if train_decoder else []
    missing = [k for k in report.missing if k not in fresh_decoder]
    head = [m for m in report.mismatched if m[0].startswith("seg_head.")]
    mismatched = [m for m in report.mismatched if m not in head]
    if missing or report.unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[:2]!r})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected (first {report.unexpected[:2]!r})")
        if mismatched:
            key, theirs, ours = mismatched[0]
            parts.append(f"{key} is {theirs} in the file, {ours} in the model")
        raise CheckpointError(f"{path}: the base checkpoint ({report.layout} layout) does not match the model, got "
                              f"{'; '.join(parts)}. {_load_hint(missing, report.unexpected)}")
    notes = list(report.notes)
    if fresh_decoder:
        notes.append(f"the checkpoint has no decoder: the decoder ({len(fresh_decoder)} tensors) starts from its "
                     "initialisation and trains in full")
    if head:
        notes.append(f"the checkpoint's head has another shape ({head[0][1]} vs {head[0][2]}): the head keeps its "
                     "initialisation")
    model.lora3d_notes = [f"{path}: {n}" for n in notes]
    model.lora3d_base = {"path": str(path), "layout": report.layout, "loaded": len(report.loaded),
                         "notes": notes}


def _load_hint(missing: list[str], unexpected: list[str]) -> str:
    if missing and all(k.startswith("backbone.dec.") for k in missing):
        return ("The checkpoint has no decoder: use an encoder-only backbone (`sonata-base`, `concerto-large`) or "
                "`model.train_decoder: true`.")
    if unexpected and all(".dec." in k or k.startswith("dec.") for k in unexpected):
        return "The checkpoint has a decoder: use `sonata-base-decoder` or a backbone mapping with its `dec_*` keys."
    return "Set `model.backbone` to the checkpoint's architecture (its Pointcept config's `backbone`)."
