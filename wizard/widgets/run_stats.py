"""Provides the dashboard's numbers panel: status, step and epoch progress, ETA, loss, lr, throughput, memory."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from wizard.run.state import RunState, format_bytes, format_duration

_STATUS_STYLE = {"waiting": "dim", "running": "bold cyan", "completed": "bold green", "stopped": "bold yellow",
                 "failed": "bold red"}


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "?" if value is None else format(value, spec)


def _bar(fraction: float, width: int = 20) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled)


def stats_renderable(state: RunState, run_name: str = "") -> Text:
    """Three short lines of numbers (each fits 78 columns)."""
    total = state.total_steps
    step = state.step
    fraction = step / total if total else 0.0
    epoch = state.epoch
    smoothed = state.smoothed[-1] if state.smoothed else None
    mem_kind = "GPU" if str(state.start.get("device", "")).startswith("cuda") else "RSS"
    text = Text.assemble(
        (f"{state.status:<9}", _STATUS_STYLE.get(state.status, "")), " ", _bar(fraction),
        f" step {step}/{total or '?'}",
        f"  epoch {epoch + 1 if epoch is not None else '?'}/{state.num_epochs or '?'}",
        "  ETA ", (format_duration(state.eta_seconds), "bold"), f"  {run_name}",
    )
    text.append("\nloss ")
    text.append(_fmt(state.loss), style="bold")
    text.append(f" (smoothed {_fmt(smoothed)})  lr {_fmt(state.lr, '.2e')}  "
                f"{_fmt(state.samples_per_s, '.2f')} samples/s  {_fmt(state.tokens_per_s, ',.0f')} tokens/s")
    text.append(f"\nmem {format_bytes(state.memory_bytes)} {mem_kind}  ")
    if state.primary_metric and state.best is not None:
        text.append(f"best {state.primary_metric} {state.best:.4g} @ step {state.best_step}", style="green")
    else:
        text.append("eval: at the end or every `train.eval_every` steps", style="dim")
    if state.warnings:
        text.append(f"  {len(state.warnings)} warning(s): see Log", style="yellow")
    return text


class RunStats(Static):
    """Shows a RunState (call `show(state)`)."""

    def show(self, state: RunState, run_name: str = "") -> None:
        self.update(stats_renderable(state, run_name))
