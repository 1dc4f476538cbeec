"""Provides the typed events of events.jsonl: one frozen dataclass per event type, holding only valid fields.

`parse_event(raw)` turns one decoded line into its typed event. A documented field of the wrong type (a
string where a number belongs, a list where an object belongs) reads as missing and is named in
`dropped`, so every reader (the headless display, `lora3d watch --plain`, the wizard's dashboard) can
trust the types it reads, whatever wrote the file. Fields outside the schema (e.g. a family's
`train/<metric>`) are kept in `extra` when they are numbers, strings or booleans. docs/events.md is the
schema in words.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

MAX_TEXT_CHARS = 20_000
"""Longer text fields are cut here (with a note), so one huge message cannot flood a terminal."""


def _number(value: Any) -> float | None:
    """A float from a number or the strings the writer uses for non-finite values ("nan", "inf", "-inf")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
        return float(value)
    return None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if len(value) > MAX_TEXT_CHARS:
        return value[:MAX_TEXT_CHARS] + f" ... ({len(value) - MAX_TEXT_CHARS} more characters)"
    return value


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _metrics(value: Any) -> dict[str, float] | None:
    """An object of numbers; entries that are not numbers are left out."""
    if not isinstance(value, Mapping):
        return None
    out = {}
    for key, item in value.items():
        number = _number(item)
        if isinstance(key, str) and number is not None:
            out[key] = number
    return out


_MODULE_FIELDS = {"module": _text, "kind": _text, "adapter": _text, "rank": _integer, "params": _integer,
                  "bytes": _integer}


def _params(value: Any) -> dict[str, Any] | None:
    """The start event's parameter summary: counts, ratio and the per-module LoRA table, each entry checked."""
    if not isinstance(value, Mapping):
        return None
    out: dict[str, Any] = {}
    for key in ("total", "trainable", "lora"):
        count = _integer(value.get(key))
        if count is not None:
            out[key] = count
    ratio = _number(value.get("ratio"))
    if ratio is not None:
        out["ratio"] = ratio
    modules = []
    for row in value.get("modules") or value.get("rows") or []:
        if not isinstance(row, Mapping):
            continue
        clean = {k: parse(row.get(k)) for k, parse in _MODULE_FIELDS.items() if parse(row.get(k)) is not None}
        shape = row.get("shape")
        if isinstance(shape, list) and all(_integer(s) is not None for s in shape):
            clean["shape"] = [int(s) for s in shape]
        modules.append(clean)
    out["modules"] = modules
    return out


def _preview_items(value: Any) -> list[dict[str, Any]] | None:
    """The preview event's items: `{"name", "png", "glb"}` each, strings (`glb` may be null); bad entries left out."""
    if not isinstance(value, list):
        return None
    out = []
    for row in value:
        if not isinstance(row, Mapping):
            continue
        name, png, glb = _text(row.get("name")), _text(row.get("png")), _text(row.get("glb"))
        if name is not None and png is not None:
            out.append({"name": name, "png": png, "glb": glb})
    return out


def _names(value: Any) -> list[str] | None:
    """A list of strings; entries that are not strings are left out."""
    if not isinstance(value, list):
        return None
    return [text for text in (_text(v) for v in value) if text is not None]


_PARSERS = {int: _integer, float: _number, str: _text, bool: _flag}
_SPECIAL = {"metrics": _metrics, "params": _params, "items": _preview_items, "skipped": _names}


@dataclass(frozen=True)
class Event:
    """Fields every event has; `extra` holds scalar fields outside the schema, `dropped` the invalid ones."""

    type: str
    time: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    TYPES: ClassVar[tuple[str, ...]] = ()

    def as_dict(self) -> dict[str, Any]:
        """The event as the JSON object it came from, less its invalid fields (None fields left out)."""
        out: dict[str, Any] = {"type": self.type}
        if self.time is not None:
            out["time"] = self.time
        for f in _schema_fields(type(self)):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        out.update(self.extra)
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access to a field (typed) or an extra field, as readers of the raw events used."""
        value = self.as_dict().get(key)
        return default if value is None else value


@dataclass(frozen=True)
class StartEvent(Event):
    TYPES: ClassVar[tuple[str, ...]] = ("start",)
    run_dir: str | None = None
    name: str | None = None
    family: str | None = None
    task: str | None = None
    device: str | None = None
    mixed_precision: str | None = None
    num_processes: int | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    effective_batch: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    train_samples: int | None = None
    val_samples: int | None = None
    resumed_from: str | None = None
    start_step: int | None = None
    params: dict | None = None
    pid: int | None = None
    lock: str | None = None


@dataclass(frozen=True)
class StepEvent(Event):
    TYPES: ClassVar[tuple[str, ...]] = ("step",)
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    step_time: float | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    memory_bytes: int | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None


@dataclass(frozen=True)
class EvalEvent(Event):
    TYPES: ClassVar[tuple[str, ...]] = ("eval",)
    step: int | None = None
    metrics: dict | None = None
    primary: str | None = None
    best: float | None = None
    best_step: int | None = None
    improved: bool | None = None
    preview_seconds: float | None = None
    """Seconds the preview round after this evaluation took (None: the run draws no previews)."""


@dataclass(frozen=True)
class PreviewEvent(Event):
    """A preview round: `items` of `{"name", "png", "glb"}` (paths relative to the run directory)."""

    TYPES: ClassVar[tuple[str, ...]] = ("preview",)
    step: int | None = None
    items: list | None = None
    seconds: float | None = None
    skipped: list | None = None
    """Items the round's time budget left out."""


@dataclass(frozen=True)
class CheckpointEvent(Event):
    TYPES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    step: int | None = None
    path: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class OomEvent(Event):
    TYPES: ClassVar[tuple[str, ...]] = ("oom",)
    step: int | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    previous_micro_batch: int | None = None
    previous_grad_accum: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class MessageEvent(Event):
    """`warning`, `info` and `error` events."""

    TYPES: ClassVar[tuple[str, ...]] = ("warning", "info", "error")
    message: str | None = None
    step: int | None = None
    kind: str | None = None
    """The error class, on `error` events."""


@dataclass(frozen=True)
class EndEvent(Event):
    TYPES: ClassVar[tuple[str, ...]] = ("end",)
    status: str | None = None
    step: int | None = None
    final_loss: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    adapter: str | None = None
    partial: bool | None = None
    """True when `adapter` holds a stopped run's last step rather than the finished schedule."""


EVENT_CLASSES: tuple[type[Event], ...] = (StartEvent, StepEvent, EvalEvent, PreviewEvent, CheckpointEvent, OomEvent,
                                          MessageEvent, EndEvent)
_BY_TYPE = {name: cls for cls in EVENT_CLASSES for name in cls.TYPES}


@cache
def _schema_fields(cls: type[Event]) -> tuple[dataclasses.Field, ...]:
    base = {f.name for f in dataclasses.fields(Event)}
    return tuple(f for f in dataclasses.fields(cls) if f.name not in base)


@cache
def _field_parsers(cls: type[Event]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    parsers = {}
    for f in _schema_fields(cls):
        if f.name in _SPECIAL:
            parsers[f.name] = _SPECIAL[f.name]
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
        parsers[f.name] = _PARSERS[args[0]]
    return parsers


def parse_event(raw: Mapping[str, Any]) -> Event | None:
    """The typed event of one decoded line; None when it is not an event (no string `type`)."""
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if not isinstance(kind, str):
        return None
    cls = _BY_TYPE.get(kind, Event)
    parsers = _field_parsers(cls)
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    dropped = []
    for key, value in raw.items():
        if key in ("type", "time") or not isinstance(key, str):
            continue
        parse = parsers.get(key)
        if parse is None:
            if isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= MAX_TEXT_CHARS):
                extra[key] = value
            elif value is not None:
                dropped.append(key)
            continue
        parsed = parse(value)
        if parsed is None and value is not None:
            dropped.append(key)
        values[key] = parsed
    return cls(type=kind, time=_number(raw.get("time")), extra=extra, dropped=tuple(dropped), **values)


def as_event(event: Event | Mapping[str, Any]) -> Event | None:
    """A typed event from either form (listeners receive the dicts the writer wrote)."""
    return event if isinstance(event, Event) else parse_event(event)
