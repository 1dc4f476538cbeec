"""Provides the headless progress display: a rich bar on a terminal, plain log lines otherwise.

It listens to the trainer's events, so it shows exactly what events.jsonl records.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def _fmt_bytes(n: int | None) -> str:
    return "-" if not n else f"{n / 1024**3:.2f} GB"


class HeadlessDisplay:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.tty = self.console.is_terminal and sys.stderr.isatty()
        self.progress: Progress | None = None
        self.task = None
        self.last_step: dict[str, Any] = {}
        self.start: dict[str, Any] = {}
        self.evals: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event['type']}", None)
        if handler is not None and not self.quiet:
            handler(event)
        elif event["type"] in ("error",) and self.quiet:
            self._on_error(event)

    def _on_start(self, e: dict[str, Any]) -> None:
        self.start = e
        p = e.get("params", {})
        self.console.print(
            f"[bold]lora3d[/] {e['family']}/{e.get('task')} on {e['device']} ({e['mixed_precision']}): "
            f"{e['total_steps']} steps, effective batch {e['effective_batch']} "
            f"(micro {e['micro_batch']} x accum {e['grad_accum']} x {e['num_processes']} proc), "
            f"trainable {p.get('trainable', 0):,} of {p.get('total', 0):,} ({100 * p.get('ratio', 0):.2f}%)"
            + (f", resumed from {e['resumed_from']}" if e.get("resumed_from") else "")
        )
        self.console.print(f"run directory: {e['run_dir']}")
        if self.tty:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=e["total_steps"], completed=e.get("start_step", 0), loss="-")

    def _on_step(self, e: dict[str, Any]) -> None:
        self.last_step = e
        if self.progress is not None:
            self.progress.update(self.task, completed=e["step"], loss=f"{e['loss']:.4f}")
        else:
            sps = e.get("samples_per_s")
            self.console.print(
                f"step {e['step']}/{e['total_steps']} loss {e['loss']:.5f} lr {e['lr']:.3g}"
                + (f" {sps:.2f} samples/s" if sps else "")
                + f" mem {_fmt_bytes(e.get('memory_bytes'))}"
            )

    def _on_eval(self, e: dict[str, Any]) -> None:
        self.evals.append(e)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in e["metrics"].items())
        self.console.print(f"eval at step {e['step']}: {metrics}" + (" (best)" if e.get("improved") else ""))

    def _on_warning(self, e: dict[str, Any]) -> None:
        self.console.print(f"[yellow]warning:[/] {e['message']}")

    def _on_oom(self, e: dict[str, Any]) -> None:
        pass  # the paired warning event says it in words

    def _on_info(self, e: dict[str, Any]) -> None:
        self.console.print(e["message"])

    def _on_checkpoint(self, e: dict[str, Any]) -> None:
        if self.progress is None:
            self.console.print(f"checkpoint {e['path']} ({e['reason']})")

    def _on_error(self, e: dict[str, Any]) -> None:
        self.close()

    def _on_end(self, e: dict[str, Any]) -> None:
        self.close()
        if e["status"] == "failed":
            return
        table = Table(title=f"run {e['status']}", show_header=False)
        table.add_row("steps", str(e["step"]))
        if e.get("final_loss") is not None:
            table.add_row("final loss", f"{e['final_loss']:.5f}")
        if self.evals:
            for k, v in self.evals[-1]["metrics"].items():
                table.add_row(f"eval {k}", f"{v:.4f}")
        if e.get("best_metric") is not None:
            table.add_row("best", f"{e['best_metric']:.4f} at step {e.get('best_step')}")
        if self.last_step.get("samples_per_s"):
            table.add_row("throughput", f"{self.last_step['samples_per_s']:.2f} samples/s")
        if e.get("adapter"):
            table.add_row("adapter", e["adapter"])
        self.console.print(table)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
