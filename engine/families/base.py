"""Provides the family contract: what a model family declares, and the Recipe it resolves a profile into.

A family is one folder under `engine/families/` (or a plugin module named in `LORA3D_PLUGINS`). It declares,
as class attributes, what the engine and the wizard need to know without building anything (its label,
tasks, extra profile keys, LoRA presets as data, CLI subcommands, demo, wizard defaults), and implements a
few methods that do the work:

- `resolve(profile)`: once per run, a validated Profile becomes a frozen `Recipe` (family options, the task
  strategy with its loss and evaluation, the LoRA spec with presets applied, notes on what was defaulted).
- `build_model`, `build_datasets`, `collate`, `describe_memory`, `data_check`, `save_adapter`,
  `merge_adapter`, `identity`: each takes the Recipe, never the raw profile.
- `preview_items` and `preview` (optional): pictures of what the model does on a few fixed items, drawn by
  the trainer at step 0 and after every evaluation (`engine.train.previews`); `preview_data` pictures one
  training item before any training (the wizard's data screen).

The engine owns everything else: profiles, LoRA injection (`engine.lora`), the trainer, checkpoints, events,
the memory planner, the CLI and the wizard. Nothing here names a family.

NOTE: datasets must be deterministic given (profile seed, epoch, index): the trainer calls
`dataset.set_epoch(epoch)` when the method exists and relies on it for exact resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from engine.errors import CheckpointError, ProfileError
from engine.families.entry import CliCommand
from engine.lora import save_lora_checkpoint
from engine.lora.presets import LoraPreset, resolve_preset
from engine.lora.spec import LoraSpec
from engine.profile import Profile, ProfileExtension, apply_overrides, validate_profile


@dataclass
class StepOutput:
    """One micro-batch's result.

    Attributes:
        loss: scalar tensor the trainer back-propagates (already averaged over the micro-batch).
        metrics: extra scalars to log (floats).
        num_samples: samples in the micro-batch (scenes for PTv3, instances for MIDI).
        num_tokens: tokens processed (points for PTv3, instances x latent tokens for MIDI).
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    num_samples: int = 1
    num_tokens: int = 0


class Task(Protocol):
    """A task strategy: the loss of one micro-batch and the evaluation over validation batches.

    Built by the family's `resolve` with every setting it needs bound, so neither method reads a profile.
    """

    name: str
    primary_metric: str
    """The eval metric best-checkpoint tracking follows."""
    greater_is_better: bool

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput: ...

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Metrics over the batches; must contain `primary_metric`."""
        ...


@dataclass(frozen=True)
class Lever:
    """A setting that shrinks one sample (the planner's last lever): `--set key=value` halves its tokens."""

    label: str
    """What it changes, e.g. `points per scene`."""
    key: str
    """The dotted profile key, e.g. `data.point_budget`."""
    value: Any
    """The value that halves the tokens per sample."""

    def set_item(self) -> str:
        return f"`{self.key}={self.value}`"


@dataclass
class MemoryDescription:
    """What the memory planner needs to know about a family's model at the recipe's settings.

    All counts are per process; bytes are computed by `engine.memory.estimate`.
    """

    frozen_params: int
    lora_params: int
    other_trainable_params: int
    tokens_per_sample: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    """Per transformer/conv layer: `{"name", "width", "tokens_factor", "heads", "seq"}` plus the saved
    elements per token `fp32_elems`, `half_elems`, `rank_elems` (per unit of rank), `ckpt_elems`,
    `checkpointable` and `scores_stored` (see `engine.memory.estimate.activation_bytes`)."""
    extra_bytes: int = 0
    """Family-specific fixed buffers (caches, frozen encoders kept on device)."""
    frozen_bytes: int | None = None
    """Bytes of the frozen parameters in their dtype; None means 4 x `frozen_params` (fp32)."""
    rank: int = 0
    """The LoRA rank `lora_params` was counted at."""
    lora_params_per_rank: int = 0
    """LoRA parameters per unit of rank, so the planner can vary the rank without re-describing."""
    input_bytes_per_token: float = 0.0
    """Bytes of the micro-batch's input tensors per token (features, targets, coordinates)."""
    index_bytes_per_token: float = 0.0
    """Bytes of integer buffers per token (serialization orders, neighbour maps, padding plans)."""
    fixed_bytes_per_sample: float = 0.0
    """Bytes per sample that do not scale with its tokens (PTv3: the dense neighbour lookup table over the
    scene's voxel grid)."""
    activation_factor: float = 1.0
    """Measured peak over the counted saved tensors (backward temporaries, allocator retention)."""
    tokens_vary: bool = False
    """The data decides the tokens per sample (e.g. voxelisation under a point budget): the measured probe
    compares its estimate at the tokens that actually ran."""
    loader_sample_bytes: float | None = None
    """Host bytes of one sample as the data loader holds it; None: `tokens_per_sample x input_bytes_per_token`."""
    disk_cache_bytes: int = 0
    """Bytes the family caches on disk for this run (MIDI: the latent cache), checked against free space."""
    disk_cache_dir: Path | None = None
    """Where that cache lives."""
    lever: Lever | None = None
    """The per-sample lever (fewer points or instances per sample) for the out-of-memory advice."""
    notes: list[str] = field(default_factory=list)
    """Defaults and assumptions the description used (shown by `lora3d plan`)."""


@dataclass(frozen=True)
class PreviewItem:
    """One fixed item a preview round draws: item `index` of `dataset` (a split the family built).

    Attributes:
        name: the file stem of its pictures (`previews/step-N/<name>.png`): a scene name, unique in a round.
        split: `val` or `train`, for messages.
        cache: what the family's `preview` keeps from one round to the next: parts that training does not
            change (MIDI: the frozen VAE's ground-truth mesh and its render), drawn once per run.
    """

    name: str
    dataset: Any
    index: int
    split: str = "val"
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class PreviewFiles:
    """What a family's `preview` wrote for one item.

    Attributes:
        png: the picture (RGB, panels with titles), in the folder it was given.
        glb: a mesh file beside it, when the family generates shapes.
        mesh: `(vertices (V, 3) float32, faces (F, 3) int32, colors (V, 3) uint8)` for TensorBoard's
            `add_mesh`, when the family has one.
    """

    png: Path
    glb: Path | None = None
    mesh: tuple[Any, Any, Any] | None = None


def first_preview_items(train_ds: Any, val_ds: Any, count: int, name_of: Callable[[Any, int], str]) -> list[PreviewItem]:
    """The first `count` items of the validation split (of the training split when there is none).

    `name_of(dataset, index)` names an item; names are made unique (`-2`, `-3`, ...) when a split repeats one.
    """
    dataset, split = (val_ds, "val") if val_ds is not None and len(val_ds) > 0 else (train_ds, "train")
    if dataset is None:
        return []
    items, seen = [], set()
    for index in range(min(count, len(dataset))):
        name = base = str(name_of(dataset, index))
        suffix = 2
        while name in seen:
            name, suffix = f"{base}-{suffix}", suffix + 1
        seen.add(name)
        items.append(PreviewItem(name, dataset, index, split))
    return items


@dataclass(frozen=True)
class WizardSpec:
    """What the wizard shows and starts from for this family."""

    description: str
    """The model screen's text about the base model."""
    new_profile: Mapping[str, Any]
    """Sections a new profile starts from (the wizard's answers and the plan fill in the rest)."""
    pretrained_hint: str = ""
    """Placeholder for the base checkpoint field, e.g. `~/models/x/model_best.pth`."""
    demo_profile: Path | None = None
    """The shipped demo profile, when the family has a built-in demo the wizard can run."""
    demo_label: str = ""
    """The model list's line for the demo."""
    order: int = 100
    """Position in the wizard's model list (lower first, ties by name); the first listed demo is the default."""


@dataclass(frozen=True)
class Prerequisite:
    """A file a recipe needs that one training run builds once and caches (e.g. a demo's pretrained base).

    The trainer builds missing prerequisites before it builds the model (`engine.train.prerequisites`), so
    every way of running a recipe (CLI, wizard, demo, tests) gets them, and through the same Trainer.

    Attributes:
        path: where the result is cached; it exists once built (written atomically).
        profile: the profile, as plain data, of the run that builds it (`output` is set by the runner).
        export: writes the trained model to the given path: `export(model, recipe, path)`.
        description: one line for progress messages, e.g. `the demo's tiny base (pretrained on rooms A)`.
    """

    path: Path
    profile: Mapping[str, Any]
    export: Callable[[nn.Module, Recipe, Path], None]
    description: str


@dataclass(frozen=True)
class Recipe:
    """A profile resolved by its family once: everything a run needs, frozen.

    Attributes:
        family: the family plugin (one instance per family, from the registry).
        profile: the resolved profile: validated and frozen, with the task, preset values and every family
            default the family filled in; `profile.resolved.yaml` is this written out.
        task: the task strategy (loss, evaluation, primary metric).
        lora: what to adapt and how (`engine.lora.apply_lora_spec` injects it).
        options: the family's own resolved settings (a frozen dataclass of the family's choosing).
        notes: what was defaulted, overridden or guessed during resolution, said at run start.
        source: the file (or `<wizard>`, `<demo>`) the profile came from, for messages.
    """

    family: Family
    profile: Profile
    task: Task
    lora: LoraSpec
    options: Any = None
    notes: tuple[str, ...] = ()
    source: str = "<profile>"

    def with_overrides(self, items: Mapping[str, Any]) -> Recipe:
        """A new recipe of this one's resolved profile with dotted keys changed (e.g. `output.dir`)."""
        data = apply_overrides(self.profile.to_yaml_dict(), list(items.items()))
        return self.family.resolve(validate_profile(data, self.source, self.family.extension()), source=self.source)


def auto_workers(device_type: str, cpu_count: int) -> int:
    """`data.num_workers: auto`: a GPU step is fed by up to 4 loader processes with one core left for the
    training process (4 keep a 192k-point SceneSplat scene per 0.25 s GPU step fed, docs/benchmarks.md);
    a CPU run loads in its own process, since workers would take the cores the model computes on."""
    return min(4, max(0, cpu_count - 1)) if device_type == "cuda" else 0


class Family:
    """Base class of a family plugin. Subclasses set the class attributes and override the methods."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    """One line naming the family and its base model (CLI help, the wizard's model list)."""
    tasks: ClassVar[tuple[str, ...]] = ()
    default_task: ClassVar[str] = ""
    model_options: ClassVar[type[BaseModel] | None] = None
    """Pydantic model whose fields are added to the profile's `model` section."""
    data_options: ClassVar[type[BaseModel] | None] = None
    """Pydantic model whose fields are added to the profile's `data` section."""
    lora_options: ClassVar[type[BaseModel] | None] = None
    """Pydantic model whose fields are added to the profile's `lora` section (where LoRA goes)."""
    preview_options: ClassVar[type[BaseModel] | None] = None
    """Pydantic model whose fields are added to the profile's `previews` section (e.g. sampling steps)."""
    presets: ClassVar[Mapping[str, LoraPreset]] = {}
    """Named LoRA presets (data); `resolve` applies the chosen one (`engine.lora.presets.resolve_preset`)."""
    commands: ClassVar[tuple[CliCommand, ...]] = ()
    demo: ClassVar[str | None] = None
    """`module:function` of the built-in demo (`lora3d demo NAME`): `run_demo(out_dir, console, quick, seed)`."""
    wizard: ClassVar[WizardSpec | None] = None
    identity_ignores: ClassVar[frozenset[str]] = frozenset()
    """Dotted profile keys of the family that change neither the samples nor the optimisation (how it evaluates),
    left out of the resume identity (`engine.train.identity`) so that changing them never blocks a resume."""

    # ------------------------------------------------------------------ profile -> recipe
    @classmethod
    def extension(cls) -> ProfileExtension:
        """The keys this family adds to a profile."""
        return ProfileExtension(cls.model_options, cls.data_options, cls.lora_options, cls.preview_options)

    def resolve(self, profile: Profile, cli_keys: Iterable[str] = (), source: str = "<profile>") -> Recipe:
        """Resolves a validated profile into a Recipe, once.

        Applies the task default and the preset (explicit keys win; a preset given on the command line wins
        over the file's keys), re-validates the result, and lets the family check and derive its options.

        Args:
            profile: validated with this family's extension.
            cli_keys: dotted keys given on the command line (`--set`), for the preset rule.
            source: the profile's file name, for messages.

        Raises:
            ProfileError: every problem found, one per line, each starting with `source`.
        """
        notes: list[str] = []
        errors: list[str] = []
        task = profile.model.task
        if task is None:
            task = self.default_task
        elif task not in self.tasks:
            if len(self.tasks) == 1:
                only = self.default_task
                fix = f"must be `{only}` for the {self.name} family, got {task!r}. Set `model.task: {only}`."
            else:
                fix = f"is not a {self.name} task, got {task!r}. Use one of {', '.join(f'`{t}`' for t in self.tasks)}."
            raise ProfileError(f"{source}: `model.task` {fix}")
        lora_values = profile.lora.model_dump(mode="json")
        preset_name = profile.lora.preset
        if preset_name is not None:
            if preset_name not in self.presets:
                kinds = {getattr(p, "architecture", self.name) for p in self.presets.values()} or {self.name}
                raise ProfileError(
                    f"{source}: `lora.preset` is not a {'/'.join(sorted(kinds))} preset, got {preset_name!r}. Use one "
                    f"of {', '.join(f'`{p}`' for p in self.presets)}, or remove it and set the `lora` keys directly."
                )
            explicit = set(profile.lora.model_fields_set)
            cli = {k.removeprefix("lora.") for k in cli_keys if k.startswith("lora.")}
            values = self.presets[preset_name].profile_values(self.preset_context(profile))
            lora_values, preset_notes = resolve_preset(preset_name, lora_values, values, explicit, cli)
            notes.extend(preset_notes)
        data = profile.to_yaml_dict()
        data["model"]["task"] = task
        data["lora"] = lora_values
        if profile.data.num_workers == "auto":
            data["data"]["num_workers"] = auto_workers(profile.device_type, os.cpu_count() or 1)
            notes.append(f"data.num_workers: auto -> {data['data']['num_workers']} on this {profile.device_type} machine "
                         f"({os.cpu_count()} cores)")
        resolved = validate_profile(data, source, self.extension())
        errors.extend(self.check(resolved))
        if errors:
            raise ProfileError("\n".join(f"{source}: {e}" for e in errors))
        return self.build_recipe(resolved, notes, source)

    def preset_context(self, profile: Profile) -> Any:
        """What a preset needs to know about the model to give its values (e.g. the number of stages)."""
        return None

    def check(self, profile: Profile) -> list[str]:
        """Cross-key checks of the resolved profile; returns messages (`key: what is wrong, got v. fix.`)."""
        return []

    def build_recipe(self, profile: Profile, notes: list[str], source: str) -> Recipe:
        """The Recipe of a resolved and checked profile: the family's options, task and LoRA spec."""
        raise NotImplementedError

    # ------------------------------------------------------------------ run time
    def build_model(self, recipe: Recipe) -> nn.Module:
        """The base model with its task head, base weights loaded, all parameters frozen.

        What loading skipped or guessed goes into `model.lora3d_notes` (a list of strings); the trainer
        reports each as a warning.
        """
        raise NotImplementedError

    def build_datasets(self, recipe: Recipe) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        """Switches per-block gradient checkpointing on the model's backbone."""

    def describe_memory(self, recipe: Recipe) -> MemoryDescription:
        raise NotImplementedError

    def inference_memory(self, recipe: Recipe, tokens: int, scene_tokens: int | None = None,
                         device: str = "cpu") -> dict[str, int]:
        """Bytes of one forward pass without gradients over `tokens` tokens (prediction, evaluation).

        Returns the parts in bytes with `expected` (the device's peak) and, when the family holds a whole
        scene of `scene_tokens` on the host while it runs in chunks, `scene` (host bytes).
        `engine.families.inference_budget` sizes forward passes with it.
        """
        raise NotImplementedError

    def prerequisites(self, recipe: Recipe) -> list[Prerequisite]:
        """Cached files the recipe needs that a training run builds (a demo base); built before `build_model`."""
        return []

    def data_check(self, recipe: Recipe) -> Any:
        """A report of the data folder (counts, problems) with `to_dict()` and `render(console)`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ previews
    def preview_items(self, recipe: Recipe, train_ds: Any, val_ds: Any) -> list[PreviewItem]:
        """The fixed items every preview round draws (`previews.items` of them); [] draws no previews.

        The same items in the same order every round and every rerun, so pictures compare across steps and runs.
        """
        return []

    def preview(self, recipe: Recipe, model: nn.Module, item: PreviewItem, folder: Path, seed: int,
                step: int) -> PreviewFiles:
        """Draws what `model` does on `item` into `folder` as `<item.name>.png` (and `.glb` for shapes).

        Called by `engine.train.previews` in eval mode without gradients, on a forked RNG, under the run's
        autocast; the same model, item and seed must give the same picture. Files are written whole (the
        trainer publishes the folder atomically). What does not change while training (a frozen part's output
        on the item) can be drawn once and kept in `item.cache`.

        Args:
            model: the model being trained (adapter active), on its device.
            item: one of `preview_items`.
            folder: where to write (a temporary folder that becomes `previews/step-N/`).
            seed: `previews.seed` (a family that samples derives its generators from it).
            step: the training step the model has done (0: the base), for the picture's title.
        """
        raise NotImplementedError(f"the {self.name} family draws no previews")

    def preview_data(self, recipe: Recipe, folder: Path) -> list[Path]:
        """Writes PNGs of one training item as the model will read it into `folder` and returns their paths.

        Shown before training (the wizard's data screen) so a user sees the data was read right; [] means the
        family draws no data preview.
        """
        return []

    def identity(self, recipe: Recipe, model: nn.Module) -> dict[str, Any]:
        """Family fields a checkpoint must share with the run resuming it, beyond what the engine records.

        The engine records the architecture, the trainable tensors, the resolved `model`, `lora` and `data`
        sections and the optimisation keys (`engine.train.identity`); a family adds what it resolves at
        build time (e.g. MIDI's multi-instance blocks).
        """
        return {}

    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        """Writes the adapter in PEFT layout (adapter_config.json + adapter_model.safetensors)."""
        save_lora_checkpoint(model, folder, metadata=metadata)

    def merge_adapter(self, recipe: Recipe, adapter: Path, out: Path, bare: bool = False) -> Path:
        """Folds the adapter into the base weights and writes a checkpoint a plain model loads strictly.

        `bare`: write the state dict alone where the family's usual file wraps it (Pointcept's
        `{"epoch", "state_dict"}`); a family whose files are bare already refuses it with a message.
        """
        raise CheckpointError(
            f"{adapter}: the {self.name} family writes no merged checkpoint, got `lora3d merge` (out {out}). Load the "
            "base model and the adapter (`engine.lora.load_lora_checkpoint`) instead."
        )
