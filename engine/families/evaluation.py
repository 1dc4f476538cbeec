"""Provides what every family's `lora3d eval` / `lora3d predict` share: sources, adapters, metrics as trained, reports.

- `load_source(path)`: a run directory, an adapter folder inside one, or a profile becomes the recipe and
  the adapters to use by default.
- `adapter_names(paths)`: one short, unique name per adapter (the table's row, PEFT's adapter name).
- `task_metrics(...)`: the task's evaluation exactly as the trainer runs it at an eval step (same
  transforms, micro-batch and autocast), so `lora3d eval` reproduces the metric in `events.jsonl`.
- `EvalReport`: base vs adapters, rendered as rich tables, written as JSON and CSV (atomically).

Nothing here names a family: the family's command supplies its model, loader and full evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from engine.atomic import atomic_file
from engine.errors import CheckpointError, HardwareError, Lora3dWarning, ProfileError
from engine.families.base import Recipe
from engine.families.recipe import load_recipe
from engine.lora.adapter_formats import METADATA_NAME
from engine.lora.switch import BASE, AdapterSet
from engine.profile import read_yaml

RESOLVED_PROFILE = "profile.resolved.yaml"
ADAPTER_DIRS = ("adapter", "adapter-best")
"""A run's adapter folders: the final one, then the best-metric one."""
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class EvalSource:
    """What `lora3d eval` / `predict` were pointed at.

    Attributes:
        recipe: the profile the model is built from (a run's `profile.resolved.yaml`).
        adapters: the adapters to use when none is given on the command line.
        run_dir: the run directory, or None for a profile.
        notes: what was chosen on the user's behalf.
    """

    recipe: Recipe
    adapters: tuple[Path, ...]
    run_dir: Path | None
    notes: tuple[str, ...] = ()


def _is_adapter(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in _ADAPTER_FILES)


def family_of_source(path: str | Path) -> str:
    """The family named by a run directory, an adapter folder in one, or a profile (reads YAML only)."""
    path = Path(path)
    profile = _profile_path(path)
    model = read_yaml(profile).get("model")
    family = model.get("family") if isinstance(model, dict) else None
    if not isinstance(family, str):
        raise ProfileError(f"{profile}: `model.family` is missing, got {family!r}. Name the family in the profile.")
    return family


def _profile_path(path: Path) -> Path:
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return path
    if (path / RESOLVED_PROFILE).is_file():
        return path / RESOLVED_PROFILE
    if _is_adapter(path) and (path.parent / RESOLVED_PROFILE).is_file():
        return path.parent / RESOLVED_PROFILE
    what = "no such file or folder" if not path.exists() else "no profile.resolved.yaml in it or its parent"
    raise CheckpointError(
        f"{path}: not a lora3d run directory, adapter folder of a run, or profile, got {what}. "
        "Pass the folder `lora3d train` wrote (e.g. runs/my_run), one of its adapter folders, or a profile .yaml."
    )


def load_source(path: str | Path) -> EvalSource:
    """The recipe and default adapters of a run directory, an adapter folder inside one, or a profile.

    A run directory's default adapter is `adapter/` (the final one), or `adapter-best/` when the run did
    not complete; a profile has none (the base alone, unless adapters are given).

    Raises:
        CheckpointError: the path is none of these, or the run trained every parameter (no adapter).
        ProfileError: the profile does not resolve.
    """
    path = Path(path)
    profile = _profile_path(path)
    recipe = load_recipe(profile)
    notes: list[str] = []
    if profile == path:
        return EvalSource(recipe, (), None, ())
    run_dir = profile.parent
    if recipe.lora.method == "full":
        raise CheckpointError(
            f"{run_dir}: this run trained every parameter (`lora.method: full`), got no adapter to load. Use its "
            f"`adapter/model.safetensors` as `model.pretrained` of a profile and pass that profile instead."
        )
    if path != run_dir:
        return EvalSource(recipe, (path,), run_dir, ())
    found = [run_dir / name for name in ADAPTER_DIRS if _is_adapter(run_dir / name)]
    if not found:
        notes.append(f"{run_dir}: no adapter/ or adapter-best/ yet; evaluating the base alone")
        return EvalSource(recipe, (), run_dir, tuple(notes))
    if found[0].name != ADAPTER_DIRS[0]:
        notes.append(f"{run_dir}: no adapter/ (the run has not completed); using {found[0].name}/")
    return EvalSource(recipe, (found[0],), run_dir, tuple(notes))


def adapter_names(paths: Iterable[Path]) -> list[str]:
    """One unique name per adapter path: its folder name, prefixed by its run's name when that repeats.

    Names hold letters, digits, `_` and `-` only (PEFT adapter names take no dots), and never `base`.
    """
    paths = [Path(p) for p in paths]

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "adapter"

    names = [clean(p.stem if p.is_file() else p.name) for p in paths]
    repeated = {n for n in names if names.count(n) > 1}
    names = [clean(f"{p.parent.name}-{n}") if n in repeated else n for p, n in zip(paths, names)]
    out: list[str] = []
    for name in names:
        unique, i = name, 2
        while unique in out or unique == BASE:
            unique, i = f"{name}-{i}", i + 1
        out.append(unique)
    return out


def pick_device(name: str) -> torch.device:
    """`auto` (a GPU when torch sees one), `cpu` or `cuda`.

    Raises:
        HardwareError: `cuda` without a visible GPU.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise HardwareError("`--device cuda`: no CUDA GPU is visible, got none. Use `--device cpu` or `auto`.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(recipe: Recipe, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast the trainer evaluates under: the profile's mixed precision on CUDA, none on the CPU."""
    precision = recipe.profile.train.mixed_precision
    if device.type != "cuda" or precision == "no":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def task_metrics(recipe: Recipe, model: nn.Module, dataset: Any, device: torch.device,
                 batch_size: int | None = None) -> dict[str, float]:
    """The task's evaluation over `dataset`, run as the trainer runs it at an eval step.

    Samples in index order, collated in micro-batches of `train.batch_size` (the resolved profile records
    the micro-batch the run ended with), the dataset at epoch 0, the model in eval mode, under the trainer's
    autocast: on the same data this gives the numbers of the run's eval events.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    size = batch_size or recipe.profile.train.batch_size
    indices = list(range(len(dataset)))

    def batches() -> Iterator[dict[str, Any]]:
        for start in range(0, len(indices), size):
            batch = recipe.family.collate([dataset[i] for i in indices[start : start + size]])
            yield _to_device(batch, device)

    was_training = model.training
    model.eval()
    with autocast(recipe, device):
        metrics = recipe.task.evaluate(model, batches())
    model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def check_adapter_for(recipe: Recipe, path: Path) -> None:
    """Refuses an adapter whose recorded family or task differs from the recipe's (read from its metadata).

    Raises:
        CheckpointError: other family or task (the message names both).
    """
    meta_file = Path(path) / METADATA_NAME
    if not meta_file.is_file():
        return
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_file}: unreadable adapter metadata, got {exc!s}. Re-save the adapter.") from None
    user = meta.get("user") or {}
    profile = recipe.profile
    for key, want in (("family", profile.model.family), ("task", profile.model.task)):
        got = user.get(key)
        if got is not None and want is not None and got != want:
            raise CheckpointError(
                f"{path}: adapter was trained for `model.{key}: {got}`, got a profile with `model.{key}: {want}` "
                f"({recipe.source}). Evaluate it with the run directory it was trained in."
            )


@dataclass
class LoadedModels:
    """One base model on the device with adapters loaded into it (see `load_models`)."""

    recipe: Recipe
    adapters: AdapterSet
    device: torch.device
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.adapters.model


def load_models(recipe: Recipe, paths: Iterable[Path], device: torch.device,
                load: Callable[[nn.Module, Path, str], object]) -> LoadedModels:
    """Builds the recipe's base once, moves it to `device` and loads each adapter into it under its name.

    Args:
        recipe: the run's recipe (`family.build_model` builds the frozen base with its weights).
        paths: adapter folders, named by `adapter_names`.
        load: the family's loader, `load(model, path, name)` (LoRA plus what the family saves beside it).

    Returns:
        The models; `notes` holds what loading skipped, converted or warned about.

    Raises:
        CheckpointError: a missing base, or an adapter for another family, task, architecture or class count.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise CheckpointError(f"{path}: adapter not found, got no such file or folder. Pass an adapter folder.")
        check_adapter_for(recipe, path)
    model = recipe.family.build_model(recipe).to(device).eval()
    notes = [str(n) for n in getattr(model, "lora3d_notes", [])]
    adapters = AdapterSet(model, carried=recipe.lora.trainable_modules)
    for name, path in zip(adapter_names(paths), paths):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Lora3dWarning)
            adapters.add(name, path, load)
        notes += [str(w.message) for w in caught if issubclass(w.category, Lora3dWarning)]
        model.to(device)  # LoRA layers injected on the CPU
    return LoadedModels(recipe, adapters, device, notes)


# ------------------------------------------------------------------------------------------ report
@dataclass
class ModelResult:
    """One row of an evaluation: the base or one adapter.

    Attributes:
        name: `base` or the adapter's name.
        adapter: the adapter folder (None for the base).
        metrics: the command's evaluation (per-class values as `<metric>/<class>`).
        training_metrics: the task's evaluation as the trainer runs it (empty when skipped).
    """

    name: str
    adapter: Path | None
    metrics: dict[str, float]
    training_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Base vs adapters on one data set, as a family's `lora3d eval` measured it.

    Attributes:
        title: one line naming the family, task and data (the table's title).
        primary_metric: the metric best-checkpoint tracking follows (the first summary column).
        class_names: per-class rows, in order.
        models: one result per model, base first.
        settings: how the evaluation ran (data, scenes, points, fragments, device, ...).
        notes: what was skipped, defaulted or guessed.
    """

    title: str
    primary_metric: str
    class_names: list[str]
    models: list[ModelResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "primary_metric": self.primary_metric,
            "class_names": list(self.class_names),
            "settings": dict(self.settings),
            "notes": list(self.notes),
            "models": [{"name": m.name, "adapter": str(m.adapter) if m.adapter else None, "metrics": m.metrics,
                        "training_metrics": m.training_metrics} for m in self.models],
        }

    def csv_text(self) -> str:
        """Long format, one value per line: `model,scope,metric,class,value` (scope `eval` or `training`)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "scope", "metric", "class", "value"])
        for m in self.models:
            for scope, metrics in (("eval", m.metrics), ("training", m.training_metrics)):
                for key, value in metrics.items():
                    metric, _, cls = key.partition("/")
                    writer.writerow([m.name, scope, metric, cls, repr(float(value))])
        return buffer.getvalue()

    def write(self, json_path: Path | None = None, csv_path: Path | None = None) -> list[Path]:
        """Writes the JSON and/or CSV files, each atomically; returns the paths written."""
        written = []
        for path, text in ((json_path, lambda: json.dumps(self.to_dict(), indent=2) + "\n"),
                           (csv_path, self.csv_text)):
            if path is None:
                continue
            with atomic_file(Path(path)) as tmp:
                tmp.write_text(text())
            written.append(Path(path))
        return written

    def _summary_keys(self) -> list[str]:
        keys: list[str] = []
        for m in self.models:
            keys += [k for k in m.metrics if "/" not in k and k not in keys]
        keys.sort(key=lambda k: k != self.primary_metric)  # stable: the primary metric first
        return keys

    def render(self, console: Console) -> None:
        """A summary table (one row per model) and a per-class table (IoU / accuracy per model)."""
        summary = Table(title=escape(self.title), title_justify="left")
        summary.add_column("model")
        keys = self._summary_keys()
        for key in keys:
            summary.add_column(key, justify="right")
        trained = any(m.training_metrics for m in self.models)
        if trained:
            summary.add_column(f"{self.primary_metric} (as in training)", justify="right")
        for m in self.models:
            row = [escape(m.name)] + [_fmt(m.metrics.get(k)) for k in keys]
            if trained:
                row.append(_fmt(m.training_metrics.get(self.primary_metric)))
            summary.add_row(*row)
        console.print(summary)
        kinds = [k for k in ("iou", "acc") if any(f"{k}/{c}" in m.metrics for m in self.models for c in self.class_names)]
        if kinds:
            per_class = Table(title="per class", title_justify="left")
            per_class.add_column("class")
            for m in self.models:
                for kind in kinds:
                    per_class.add_column(f"{escape(m.name)} {'IoU' if kind == 'iou' else 'Acc'}", justify="right")
            for cls in self.class_names:
                row = [escape(cls)]
                for m in self.models:
                    row += [_fmt(m.metrics.get(f"{kind}/{cls}")) for kind in kinds]
                per_class.add_row(*row)
            console.print(per_class)
        for note in self.notes:
            console.print(f"  note: {escape(note)}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


__all__ = [
    "ADAPTER_DIRS",
    "EvalReport",
    "EvalSource",
    "ModelResult",
    "LoadedModels",
    "adapter_names",
    "autocast",
    "check_adapter_for",
    "family_of_source",
    "load_models",
    "load_source",
    "pick_device",
    "task_metrics",
]
