"""Provides the headless progress display: a rich bar on a terminal, plain log lines otherwise.

It listens to the trainer's events and reads them through the same typed reader and run state as
`lora3d watch --plain` and the wizard's dashboard (`engine.train.run_state`), so it shows exactly what
events.jsonl records, in the same words.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from engine.train.event_types import EndEvent, Event, MessageEvent, StartEvent, StepEvent, as_event
from engine.train.run_state import RunState, event_line


class HeadlessDisplay:
    """A trainer listener: `display(event)` for every event; `close()` stops the bar."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.tty = self.console.is_terminal and sys.stderr.isatty()
        self.state = RunState()
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, raw: Event | Mapping[str, Any]) -> None:
        event = as_event(raw)
        if event is None:
            return
        self.state.apply([event])
        if isinstance(event, EndEvent) or (isinstance(event, MessageEvent) and event.type == "error"):
            self.close()
        if self.quiet:
            return
        if isinstance(event, StartEvent):
            self._on_start(event)
        elif isinstance(event, StepEvent) and self.progress is not None:
            self.progress.update(self.task, completed=self.state.step, loss=f"{self.state.loss or 0:.4f}")
        elif isinstance(event, EndEvent):
            self._on_end(event)
        elif event.type == "checkpoint" and self.progress is not None:
            pass  # the bar shows progress; checkpoints are in events.jsonl
        elif event.type not in ("oom", "error"):  # the oom's warning says it in words; errors are the CLI's
            self._print(event_line(event, self.state))

    def _print(self, line: str | None) -> None:
        if line:
            style = "yellow" if line.startswith("warning:") else ""
            self.console.print(f"[{style}]{escape(line)}[/]" if style else escape(line))

    def _on_start(self, event: StartEvent) -> None:
        self._print(event_line(event, self.state))
        self.console.print(f"micro-batch {event.micro_batch} x accumulation {event.grad_accum} x "
                           f"{event.num_processes} process(es); run directory: {escape(str(event.run_dir))}")
        if self.tty:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=event.total_steps, completed=event.start_step or 0,
                                               loss="-")

    def _on_end(self, event: EndEvent) -> None:
        if event.status == "failed":
            return
        state = self.state
        table = Table(title=f"run {event.status}", show_header=False)
        table.add_row("steps", str(event.step))
        if event.final_loss is not None:
            table.add_row("final loss", f"{event.final_loss:.5f}")
        for k, v in (state.last_eval.get("metrics") or {}).items():
            table.add_row(f"eval {escape(k)}", f"{v:.4f}")
        if event.best_metric is not None:
            table.add_row("best", f"{event.best_metric:.4f} at step {event.best_step}")
        if state.samples_per_s:
            table.add_row("throughput", f"{state.samples_per_s:.2f} samples/s")
        if event.adapter:
            table.add_row("adapter (partial: last step)" if event.partial else "adapter", escape(event.adapter))
        self.console.print(table)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
