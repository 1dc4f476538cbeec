"""Provides the run state the dashboard shows, folded from events.jsonl events (no Textual here).

Everything on the dashboard is derived from the events alone, so `lora3d watch` on a finished run shows
the same numbers the live dashboard showed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SMOOTHING = 0.8
"""Exponential moving average factor of the smoothed loss curve (TensorBoard's default is 0.6-0.9)."""

_RATE_WINDOW = 20
"""Steps the ETA and throughput are averaged over."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # NaN arrives as the string "nan"
    except (TypeError, ValueError):
        return None
    return number


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
    if n is None:
        return "?"
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class RunState:
    """What the dashboard shows; `apply(events)` folds new events in."""

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

    # ------------------------------------------------------------------ folding
    def apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.events_seen += 1
            kind = event.get("type")
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:
                handler(event)

    def _on_start(self, event: dict[str, Any]) -> None:
        self.start = event
        self.end = None  # a resumed run appends a second start
        if event.get("resumed_from"):
            self.messages.append(("info", f"resumed from {event['resumed_from']} at step {event.get('start_step', 0)}"))

    def _on_step(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        loss = _number(event.get("loss"))
        self.last_step = event
        if loss is not None and math.isfinite(loss):
            self.steps.append(step)
            self.losses.append(loss)
            prev = self.smoothed[-1] if self.smoothed else loss
            self.smoothed.append(SMOOTHING * prev + (1 - SMOOTHING) * loss)
        t = _number(event.get("time"))
        if t is not None:
            self.step_times.append((t, step))
            del self.step_times[:-_RATE_WINDOW]

    def _on_eval(self, event: dict[str, Any]) -> None:
        primary = event.get("primary")
        metrics = event.get("metrics") or {}
        value = _number(metrics.get(primary)) if primary else None
        self.primary_metric = primary
        if value is not None:
            self.eval_steps.append(int(event.get("step", 0)))
            self.eval_values.append(value)
        self.best = _number(event.get("best"))
        self.best_step = event.get("best_step")

    def _on_checkpoint(self, event: dict[str, Any]) -> None:
        self.checkpoints.append(event)
        self.messages.append(("info", f"checkpoint at step {event.get('step')} ({event.get('reason')}): {event.get('path')}"))

    def _on_warning(self, event: dict[str, Any]) -> None:
        where = f"step {event['step']}: " if event.get("step") is not None else ""
        self.messages.append(("warning", where + str(event.get("message", ""))))

    def _on_info(self, event: dict[str, Any]) -> None:
        self.messages.append(("info", str(event.get("message", ""))))

    def _on_oom(self, event: dict[str, Any]) -> None:
        self.messages.append((
            "warning",
            f"step {event.get('step')}: out of memory; micro-batch {event.get('previous_micro_batch')} -> "
            f"{event.get('micro_batch')}, grad accum {event.get('previous_grad_accum')} -> {event.get('grad_accum')}",
        ))

    def _on_error(self, event: dict[str, Any]) -> None:
        self.error = event
        self.messages.append(("error", f"{event.get('kind', 'error')}: {event.get('message', '')}"))

    def _on_end(self, event: dict[str, Any]) -> None:
        self.end = event

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
        epoch = self.last_step.get("epoch")
        return int(epoch) if epoch is not None else None

    @property
    def num_epochs(self) -> int | None:
        total, per_epoch = self.total_steps, self.start.get("steps_per_epoch")
        return math.ceil(total / per_epoch) if total and per_epoch else None

    @property
    def loss(self) -> float | None:
        return _number(self.last_step.get("loss"))

    @property
    def lr(self) -> float | None:
        return _number(self.last_step.get("lr"))

    @property
    def samples_per_s(self) -> float | None:
        return _number(self.last_step.get("samples_per_s"))

    @property
    def tokens_per_s(self) -> float | None:
        return _number(self.last_step.get("tokens_per_s"))

    @property
    def memory_bytes(self) -> float | None:
        return _number(self.last_step.get("memory_bytes"))

    @property
    def seconds_per_step(self) -> float | None:
        """Mean wall time per step over the recent window (falls back to the last `step_time`)."""
        if len(self.step_times) >= 2:
            (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
            if s1 > s0 and t1 > t0:
                return (t1 - t0) / (s1 - s0)
        return _number(self.last_step.get("step_time"))

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
        return list(params.get("modules") or params.get("rows") or [])

    @property
    def warnings(self) -> list[str]:
        return [text for kind, text in self.messages if kind == "warning"]
