"""Provides the wizard's one field table and one parser, shared by the Textual screens and the plain wizard.

Each answer the wizard asks for is a `Field`: its labels, the profile key it sets (so the engine's
validation messages land under it), its kind, and how it reads typed text. `parse_field` turns text into
the value or one inline message in the house format; `parse_answer` does the same for a plain-mode answer
(text, a yes/no, or a choice); `set_field` stores a parsed value in the draft. The profile's own rules
(ranges, cross-key checks) stay in the engine: the screens and the plain wizard show its messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ProfileError
from engine.profile.load import parse_overrides
from wizard.choices import choice_by_id, model_choices
from wizard.draft import PRECISIONS, ProfileDraft


@dataclass(frozen=True)
class Field:
    """One answer the wizard asks for.

    Attributes:
        name: the draft's attribute (the plan's for plan values) and the widget id.
        label: the short label of a plan row.
        question: the plain wizard's question, and the label above a field on the model and data screens.
        key: the dotted profile key it sets (`` `key` `` in the engine's messages routes them here).
        kind: `int`, `int?` (empty: None), `float?`, `bool`, `choice`, `list`, `path` (file or folder),
            `folder`, `settings` (`KEY=VALUE` words), `profile_path` (a .yaml file to write).
        minimum: the smallest whole number accepted (`int` kinds).
        placeholder: the hint shown in an empty input box.
    """

    name: str
    label: str
    question: str
    key: str
    kind: str
    minimum: int | None = None
    placeholder: str = ""


FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("family", "model", "Model family", "model.family", "choice"),
    Field("pretrained", "base checkpoint", "Base checkpoint file or pipeline folder (empty: random base, smoke tests "
          "only)", "model.pretrained", "path"),
    Field("data_root", "dataset", "Dataset folder (empty: the built-in synthetic data)", "data.root", "folder",
          placeholder="e.g. ~/data/my_scenes"),
    Field("extra", "extra settings", "Extra settings, KEY=VALUE separated by spaces (as `lora3d train --set`)",
          "extra", "settings", placeholder="e.g. train.epochs=5 train.eval_every=100"),
    Field("task", "task", "Task", "model.task", "choice"),
    Field("rank", "LoRA rank", "LoRA rank", "lora.r", "int", minimum=1),
    Field("batch_size", "batch size", "Batch size", "train.batch_size", "int", minimum=1),
    Field("grad_accum", "grad accumulation", "Gradient accumulation steps", "train.grad_accum", "int", minimum=1),
    Field("gradient_checkpointing", "grad checkpointing", "Gradient checkpointing", "train.gradient_checkpointing",
          "bool"),
    Field("precision", "precision", "Precision", "train.mixed_precision", "choice"),
    Field("lr", "learning rate", "Learning rate (empty: the default, 1e-4)", "train.lr", "float?",
          placeholder="empty: the default, 1e-4"),
    Field("max_steps", "max steps", "Max steps (empty: train.epochs)", "train.max_steps", "int?", minimum=1,
          placeholder="empty: train.epochs"),
    Field("preset", "LoRA preset", "LoRA preset", "lora.preset", "choice"),
    Field("target_modules", "LoRA targets", "LoRA target modules, comma separated", "lora.target_modules", "list"),
    Field("num_gpus", "GPUs to use", "GPUs to use", "launch.num_processes", "choice"),
    Field("save_path", "save as", "Save the profile as", "save path", "profile_path"),
)}

PLAN_FIELDS = ("task", "rank", "batch_size", "grad_accum", "gradient_checkpointing", "precision", "lr", "max_steps",
               "preset", "target_modules", "num_gpus")
"""The Plan screen's rows, in order."""

PLAIN_FIELDS = ("pretrained", "data_root", "extra", "task", "rank", "batch_size", "gradient_checkpointing",
                "precision", "save_path")
"""The plain wizard's questions after the model, in order (the Plan screen's other values keep their defaults)."""

_PLAN_VALUES = {"rank", "batch_size", "grad_accum", "gradient_checkpointing", "precision", "lr", "max_steps",
                "preset", "target_modules", "num_gpus"}


def shown(name: str, draft: ProfileDraft) -> bool:
    """Whether the field applies to this draft (a demo keeps its own base, task and settings)."""
    if name in ("pretrained", "extra"):
        return not draft.demo
    if name == "task":
        return not draft.demo and len(draft.choice.tasks) > 1
    if name == "num_gpus":
        return draft.hardware is not None and len(draft.hardware.gpus) > 1
    return True


def field_choices(draft: ProfileDraft, name: str) -> list[tuple[str, Any]]:
    """(label, value) of a choice or yes/no field, for this draft's family and hardware."""
    if name == "family":
        return [(choice.label, choice.id) for choice in model_choices()]
    if name == "gradient_checkpointing":
        return [("on", True), ("off", False)]
    if name == "precision":
        return [(p, p) for p in PRECISIONS]
    if name == "preset":
        return [("(none)", "")] + [(preset, preset) for preset, _ in draft.choice.presets]
    if name == "task":
        return [(task, task) for task in draft.choice.tasks]
    if name == "num_gpus":
        gpus = len(draft.hardware.gpus) if draft.hardware is not None else 1
        return [(f"{n} GPU{'s' if n > 1 else ''}", n) for n in range(1, max(gpus, 1) + 1)]
    raise KeyError(name)


def field_text(draft: ProfileDraft, name: str) -> str:
    """The field's current value as the text an input box or a plain question starts with."""
    value = draft_value(draft, name)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return (" " if name == "extra" else ", ").join(str(v) for v in value)
    return str(value)


def draft_value(draft: ProfileDraft, name: str) -> Any:
    """The draft's current value of a field (the choice id for `family`)."""
    if name == "family":
        return draft.choice.id
    if name == "task":
        return draft.task or (draft.choice.tasks[0] if draft.choice.tasks else None)
    if name in _PLAN_VALUES:
        return getattr(draft.plan, name)
    if name == "save_path":
        return None
    return getattr(draft, name)


def _parse_int(field: Field, text: str) -> tuple[Any, str | None]:
    if not text and field.kind == "int?":
        return None, None
    try:
        value = int(text)
    except ValueError:
        return None, f"`{field.key}` must be a whole number, got {text!r}. Type digits only, e.g. 8."
    if field.minimum is not None and value < field.minimum:
        return None, (f"`{field.key}` must be at least {field.minimum}, got {value}. Use a whole number greater than "
                      f"or equal to {field.minimum}.")
    return value, None


def _parse_path(field: Field, text: str) -> tuple[Any, str | None]:
    if not text:
        return None, None
    path = Path(text).expanduser()
    if not path.exists():
        what = "folder" if field.kind == "folder" else "file or folder"
        return path, f"{text}: not found. Type an existing {what}, or leave it empty."
    return path, None


def _parse_profile_path(text: str) -> tuple[Any, str | None]:
    if not text:
        return None, "save path: empty. Type a file name, e.g. profiles/my-run.yaml."
    path = Path(text).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        return None, f"save path: the profile must be a .yaml file, got {text!r}. Add .yaml."
    if path.is_dir():
        return None, f"save path: {text} is a folder. Type a file name inside it, e.g. {text.rstrip('/')}/my-run.yaml."
    return path, None


def parse_field(name: str, text: str) -> tuple[Any, str | None]:
    """(value, error) of typed text: the field's type, or one inline message naming the key and the fix.

    For paths the value is returned even with an error (a missing path), so a screen can still run its own
    check on it.
    """
    field = FIELDS[name]
    text = text.strip()
    if field.kind in ("int", "int?"):
        return _parse_int(field, text)
    if field.kind == "float?":
        if not text:
            return None, None
        try:
            return float(text), None
        except ValueError:
            return None, f"`{field.key}` must be a number, got {text!r}. For example 1e-4 or 0.0002."
    if field.kind == "list":
        items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
        if not items:
            return None, f"`{field.key}` needs at least one module, got {text!r}. For example attn, mlp."
        return items, None
    if field.kind in ("path", "folder"):
        return _parse_path(field, text)
    if field.kind == "settings":
        words = text.split()
        try:
            parse_overrides(words)
        except ProfileError as exc:
            return None, str(exc)
        return words, None
    if field.kind == "profile_path":
        return _parse_profile_path(text)
    if field.kind == "bool":
        lowered = text.lower()
        if lowered in ("y", "yes", "true", "on", "1"):
            return True, None
        if lowered in ("n", "no", "false", "off", "0"):
            return False, None
        return None, f"`{field.key}` must be yes or no, got {text!r}."
    return text, None


def parse_answer(draft: ProfileDraft, name: str, answer: Any) -> tuple[Any, str | None]:
    """(value, error) of a plain-mode answer: typed text, a yes/no, or one of the field's choices."""
    field = FIELDS[name]
    if field.kind == "bool" and isinstance(answer, bool):
        return answer, None
    if field.kind != "choice":
        return parse_field(name, str(answer))
    choices = field_choices(draft, name)
    for _, value in choices:
        if answer == value or str(answer) == str(value):
            return value, None
    allowed = ", ".join(f"`{value}`" for _, value in choices if value != "")
    return None, f"`{field.key}` must be one of {allowed}, got {answer!r}."


def set_field(draft: ProfileDraft, name: str, value: Any) -> None:
    """Stores a parsed value in the draft (`family` chooses the model and resets the plan)."""
    if name == "family":
        draft.choose(choice_by_id(str(value)))
    elif name == "task":
        draft.task = value or None
    elif name == "preset":
        draft.plan.preset = value or None
    elif name in _PLAN_VALUES:
        setattr(draft.plan, name, value)
    elif name in ("pretrained", "data_root"):
        setattr(draft, name, value)
    elif name == "extra":
        draft.extra = list(value or [])
    elif name != "save_path":
        raise KeyError(name)
