"""Provides the dashboard's numbers panel: status, step and epoch progress, ETA, loss, lr, throughput, memory."""

from __future__ import annotations

from rich.table import Table
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


def stats_renderable(state: RunState, run_name: str = "") -> Table:
    """Two compact lines of numbers (fits 78 columns)."""
    total = state.total_steps
    step = state.step
    fraction = step / total if total else 0.0
    epoch = state.epoch
    epochs = state.num_epochs
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    grid.add_column()
    status = Text(state.status, style=_STATUS_STYLE.get(state.status, ""))
    progress = Text.assemble(
        _bar(fraction), f" step {step}/{total or '?'}",
        f"  epoch {epoch + 1 if epoch is not None else '?'}/{epochs or '?'}",
        "  ETA ", (format_duration(state.eta_seconds), "bold"),
    )
    grid.add_row(Text.assemble(status, f" {run_name}".rstrip()), progress)
    smoothed = state.smoothed[-1] if state.smoothed else None
    memory = state.memory_bytes
    mem_kind = "GPU" if str(state.start.get("device", "")).startswith("cuda") else "RSS"
    numbers = Text.assemble(
        "loss ", (_fmt(state.loss), "bold"), f" (smoothed {_fmt(smoothed)})",
        f"  lr {_fmt(state.lr, '.2e')}",
        f"  {_fmt(state.samples_per_s, '.2f')} samples/s",
        f"  mem {format_bytes(memory)} {mem_kind}",
    )
    best = ""
    if state.primary_metric and state.best is not None:
        best = f"best {state.primary_metric} {state.best:.4g} @ {state.best_step}"
    elif state.primary_metric is None:
        best = "eval: none yet"
    grid.add_row(Text(best, style="green"), numbers)
    return grid


class RunStats(Static):
    """Shows a RunState (call `show(state)`)."""

    def show(self, state: RunState, run_name: str = "") -> None:
        self.update(stats_renderable(state, run_name))
