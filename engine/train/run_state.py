"""Provides the state of a run folded from its events, and the one-line rendering of each event.

Everything the headless display, `lora3d watch --plain` and the wizard's dashboard show is derived from
the typed events alone (`engine.train.event_types`), so watching a finished run shows the numbers the
live display showed. The dict-valued attributes (`start`, `last_step`, `end`, `error`, `checkpoints`)
hold the events' valid fields only, so a reader can use their values without checking types.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.train.event_types import (
    CheckpointEvent,
    EndEvent,
    EvalEvent,
    Event,
    MessageEvent,
    OomEvent,
    StartEvent,
    StepEvent,
    as_event,
)

SMOOTHING = 0.8
"""Exponential moving average factor of the smoothed loss curve (TensorBoard's default is 0.6-0.9)."""

_RATE_WINDOW = 20
"""Steps the ETA and throughput are averaged over."""

LINE_CHARS = 2000
"""Longest line `event_line` returns; a longer message is cut with a note."""


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`, or `?`."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_bytes(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return "?"
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class PreviewItem:
    """One preview picture of a `preview` event: paths relative to the run directory."""

    name: str
    png: str
    glb: str | None = None


@dataclass(frozen=True)
class Preview:
    """One `preview` event: the pictures of one preview round (step 0 is the base model before training)."""

    step: int
    items: tuple[PreviewItem, ...]
    seconds: float | None = None
    skipped: tuple[str, ...] = ()
    """Items not drawn because the round's time budget ran out."""


def _field(value: Any, name: str) -> Any:
    """A field of an item given as a JSON object or as a typed object."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _preview_items(value: Any) -> tuple[PreviewItem, ...]:
    """The valid items of a preview event (a `name` and a `png` path, each a string); others are left out."""
    items = []
    for raw in value if isinstance(value, (list, tuple)) else ():
        name, png, glb = _field(raw, "name"), _field(raw, "png"), _field(raw, "glb")
        if isinstance(name, str) and isinstance(png, str) and png:
            items.append(PreviewItem(name, png, glb if isinstance(glb, str) and glb else None))
    return tuple(items)


def preview_of(event: Event | Mapping[str, Any]) -> Preview | None:
    """The preview a `preview` event announces (None for other events, or one without a valid step).

    The list fields (`items`, `skipped`) are read from the typed event when its class declares them, else
    from the JSON object as written, so a reader older than the event's typed class still shows it.
    """
    typed = as_event(event)
    if typed is None or typed.type != "preview":
        return None
    raw = event if isinstance(event, Mapping) else {}

    def get(name: str) -> Any:
        value = typed.get(name)
        return raw.get(name) if value is None else value

    step, seconds, skipped = get("step"), get("seconds"), get("skipped")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer():
        return None
    seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
    names = tuple(s for s in skipped if isinstance(s, str)) if isinstance(skipped, (list, tuple)) else ()
    return Preview(int(step), _preview_items(get("items")), _finite(seconds), names)


@dataclass
class RunState:
    """What the displays show; `apply(events)` folds new events (typed, or dicts as written) in."""

    start: dict[str, Any] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_values: list[float] = field(default_factory=list)
    primary_metric: str | None = None
    best: float | None = None
    best_step: int | None = None
    last_step: dict[str, Any] = field(default_factory=dict)
    step_times: list[tuple[float, int]] = field(default_factory=list)
    """(event time, step) of recent step events, for the ETA."""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    """(kind, text) for warnings, errors, oom and info, in order."""
    end: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    events_seen: int = 0
    last_eval: dict[str, Any] = field(default_factory=dict)
    previews: list[Preview] = field(default_factory=list)
    """The preview rounds in the order written (a resumed run may repeat a step: the later round wins)."""

    # ------------------------------------------------------------------ folding
    def apply(self, events: Iterable[Event | Mapping[str, Any]]) -> None:
        for raw in events:
            event = as_event(raw)
            if event is None:
                continue
            self.events_seen += 1
            if event.type == "preview":
                self._on_preview(raw)  # the JSON object as written: its lists are the point of the event
                continue
            handler = getattr(self, f"_on_{event.type}", None)
            if handler is not None:
                handler(event)

    def _on_preview(self, raw: Event | Mapping[str, Any]) -> None:
        preview = preview_of(raw)
        if preview is None:
            return
        # The budget's cut is said by the trainer's own `warning` event; no second message here.
        self.previews = [p for p in self.previews if p.step != preview.step] + [preview]

    def _on_start(self, event: StartEvent) -> None:
        self.start = event.as_dict()
        self.end = None  # a resumed run appends a second start
        if event.resumed_from:
            self.messages.append(("info", f"resumed from {event.resumed_from} at step {event.start_step or 0}"))

    def _on_step(self, event: StepEvent) -> None:
        step = event.step or 0
        self.last_step = event.as_dict()
        loss = _finite(event.loss)
        if loss is not None:
            self.steps.append(step)
            self.losses.append(loss)
            prev = self.smoothed[-1] if self.smoothed else loss
            self.smoothed.append(SMOOTHING * prev + (1 - SMOOTHING) * loss)
        if event.time is not None:
            self.step_times.append((event.time, step))
            del self.step_times[:-_RATE_WINDOW]

    def _on_eval(self, event: EvalEvent) -> None:
        self.last_eval = event.as_dict()
        metrics = event.metrics or {}
        value = metrics.get(event.primary) if event.primary else None
        self.primary_metric = event.primary
        if value is not None:
            self.eval_steps.append(event.step or 0)
            self.eval_values.append(value)
        self.best = event.best
        self.best_step = event.best_step

    def _on_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event.as_dict())
        self.messages.append(("info", f"checkpoint at step {event.step} ({event.reason}): {event.path}"))

    def _on_warning(self, event: MessageEvent) -> None:
        where = f"step {event.step}: " if event.step is not None else ""
        self.messages.append(("warning", where + (event.message or "")))

    def _on_info(self, event: MessageEvent) -> None:
        self.messages.append(("info", event.message or ""))

    def _on_oom(self, event: OomEvent) -> None:
        self.messages.append((
            "warning",
            f"step {event.step}: out of memory; micro-batch {event.previous_micro_batch} -> "
            f"{event.micro_batch}, grad accum {event.previous_grad_accum} -> {event.grad_accum}",
        ))

    def _on_error(self, event: MessageEvent) -> None:
        self.error = event.as_dict()
        self.messages.append(("error", f"{event.kind or 'error'}: {event.message or ''}"))

    def _on_end(self, event: EndEvent) -> None:
        self.end = event.as_dict()

    # ------------------------------------------------------------------ derived numbers
    @property
    def step(self) -> int:
        if self.last_step:
            return int(self.last_step.get("step", 0))
        return int(self.start.get("start_step", 0) or 0)

    @property
    def total_steps(self) -> int | None:
        total = self.last_step.get("total_steps") or self.start.get("total_steps")
        return int(total) if total else None

    @property
    def epoch(self) -> int | None:
        return self.last_step.get("epoch")

    @property
    def num_epochs(self) -> int | None:
        total, per_epoch = self.total_steps, self.start.get("steps_per_epoch")
        return math.ceil(total / per_epoch) if total and per_epoch else None

    @property
    def loss(self) -> float | None:
        return self.last_step.get("loss")

    @property
    def lr(self) -> float | None:
        return self.last_step.get("lr")

    @property
    def samples_per_s(self) -> float | None:
        return self.last_step.get("samples_per_s")

    @property
    def tokens_per_s(self) -> float | None:
        return self.last_step.get("tokens_per_s")

    @property
    def memory_bytes(self) -> float | None:
        return self.last_step.get("memory_bytes")

    @property
    def seconds_per_step(self) -> float | None:
        """Mean wall time per step over the recent window (falls back to the last `step_time`)."""
        if len(self.step_times) >= 2:
            (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
            if s1 > s0 and t1 > t0:
                return (t1 - t0) / (s1 - s0)
        return self.last_step.get("step_time")

    @property
    def eta_seconds(self) -> float | None:
        if self.finished:
            return 0.0
        total, per_step = self.total_steps, self.seconds_per_step
        if total is None or per_step is None or not self.last_step:
            return None
        return max(0, total - self.step) * per_step

    @property
    def status(self) -> str:
        """`waiting`, `running`, or the end status (`completed`, `stopped`, `failed`)."""
        if self.end is not None:
            return str(self.end.get("status", "failed"))
        if self.error is not None:
            return "failed"
        return "running" if self.start else "waiting"

    @property
    def finished(self) -> bool:
        return self.end is not None

    @property
    def modules(self) -> list[dict[str, Any]]:
        params = self.start.get("params") or {}
        return list(params.get("modules") or [])

    @property
    def warnings(self) -> list[str]:
        return [text for kind, text in self.messages if kind == "warning"]


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def _cut(line: str) -> str:
    if len(line) <= LINE_CHARS:
        return line
    return line[:LINE_CHARS] + f" ... ({len(line) - LINE_CHARS} more characters)"


def preview_line(preview: Preview, run_dir: Path | None = None) -> str:
    """`preview step N (1.2s): <png paths>`, the paths joined to `run_dir` when it is given."""
    def where(path: str) -> str:
        return str(run_dir / path) if run_dir is not None else path

    took = f" ({preview.seconds:.1f}s)" if preview.seconds is not None else ""
    pictures = ", ".join(where(item.png) + (" (+ .glb)" if item.glb else "") for item in preview.items)
    line = f"preview step {preview.step}{took}: {pictures or 'no pictures'}"
    if preview.skipped:
        line += f"; skipped for the time budget: {', '.join(preview.skipped)}"
    return line


def event_line(event: Event | Mapping[str, Any], state: RunState, run_dir: Path | None = None) -> str | None:
    """One printable line for an event already folded into `state` (None for events not worth a line).

    `run_dir`, when given, is joined to the paths a `preview` event names (they are relative to it).
    """
    typed = as_event(event)
    if typed is None:
        return None
    preview = preview_of(event)
    if preview is not None:
        line = preview_line(preview, run_dir)
    elif isinstance(typed, StartEvent):
        params = typed.params or {}
        line = (f"start {typed.name} ({typed.family}/{typed.task}) on {typed.device}: "
                f"{typed.total_steps} steps, effective batch {typed.effective_batch}, "
                f"trainable {params.get('trainable', 0):,} of {params.get('total', 0):,}")
        if typed.resumed_from:
            line += f", resumed from {typed.resumed_from} at step {typed.start_step or 0}"
    elif isinstance(typed, StepEvent):
        if state.loss is None:
            line = f"step {state.step}"
        else:
            line = (f"step {state.step}/{state.total_steps or '?'} loss {state.loss:.4g} lr {state.lr or 0:.2e} "
                    f"{state.samples_per_s or 0:.2f} samples/s mem {format_bytes(state.memory_bytes)} "
                    f"ETA {format_duration(state.eta_seconds)}")
    elif isinstance(typed, EvalEvent):
        value = (typed.metrics or {}).get(typed.primary) if typed.primary else None
        line = (f"eval step {typed.step}: {typed.primary} {_number(value)} (best {_number(typed.best)}"
                + (", improved)" if typed.improved else ")"))
    elif isinstance(typed, CheckpointEvent):
        line = f"checkpoint step {typed.step} ({typed.reason}): {typed.path}"
    elif isinstance(typed, MessageEvent):
        line = f"{typed.type}: {typed.message}"
    elif isinstance(typed, OomEvent):
        line = f"oom at step {typed.step}: micro-batch now {typed.micro_batch}"
    elif isinstance(typed, EndEvent):
        line = f"end: {typed.status} at step {typed.step}"
        if typed.adapter:
            line += f", {'partial adapter (last step)' if typed.partial else 'adapter'} {typed.adapter}"
    else:
        return None
    return _cut(line)
