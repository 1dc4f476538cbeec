"""Provides the data-preparation report: each problem or skipped file with its scene and file, printed and saved.

Severities: ``error`` (the scene is not written), ``warning`` (written, but something was dropped or is
doubtful) and ``skipped`` (an input entry that was not read, with the reason and the accepted formats).
``prepare_report.json`` in the output folder holds the same list.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from engine.atomic import atomic_file

__all__ = ["PrepareProblem", "PrepareReport", "SceneProblems", "print_report", "write_report_file"]


@dataclass(frozen=True)
class PrepareProblem:
    """One thing wrong with, or skipped in, one input file."""

    scene: str
    """Scene name, or "." for an entry of the input folder that is no scene."""
    file: str
    """File name inside the scene (or the scene file itself)."""
    message: str
    severity: Literal["error", "warning", "skipped"] = "error"

    def __str__(self) -> str:
        return f"{self.scene}/{self.file}: {self.message}"


@dataclass
class PrepareReport:
    """What prepare_dataset did: scenes written, scenes failed, files skipped, and every problem found."""

    input_dir: Path
    output_dir: Path
    prepared: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    problems: list[PrepareProblem] = field(default_factory=list)
    """Errors, warnings and skipped files, in scene order."""

    @property
    def ok(self) -> bool:
        """True when every scene was prepared (warnings and skipped files allowed)."""
        return not self.failed

    @property
    def errors(self) -> list[PrepareProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[PrepareProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def skipped(self) -> list[PrepareProblem]:
        """Every input entry that was not read, with the reason and the accepted formats."""
        return [p for p in self.problems if p.severity == "skipped"]


class SceneProblems:
    """Collects one scene's problems so every bad file is reported, not just the first."""

    def __init__(self, scene: str) -> None:
        self.scene = scene
        self.items: list[PrepareProblem] = []

    def error(self, file: str, message: str) -> None:
        self.items.append(PrepareProblem(self.scene, file, message, "error"))

    def warn(self, file: str, message: str) -> None:
        self.items.append(PrepareProblem(self.scene, file, message, "warning"))

    def skip(self, file: str, reason: str) -> None:
        self.items.append(PrepareProblem(self.scene, file, reason, "skipped"))

    @property
    def failed(self) -> bool:
        return any(p.severity == "error" for p in self.items)


def write_report_file(report: PrepareReport) -> None:
    """Write `prepare_report.json` into the output folder (atomically: a rerun never leaves half a report)."""
    report.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "input_dir": str(report.input_dir),
        "prepared": report.prepared,
        "failed": report.failed,
        "problems": [{"scene": p.scene, "file": p.file, "severity": p.severity, "message": p.message} for p in report.problems],
    }
    with atomic_file(report.output_dir / "prepare_report.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def print_report(report: PrepareReport, console: Console | None = None) -> None:
    """Print a summary table of the scenes, every problem (errors first) and every skipped file."""
    console = console or Console(file=sys.stderr)
    table = Table(title=f"Prepared {len(report.prepared)} of {len(report.prepared) + len(report.failed)} scenes into {report.output_dir}")
    table.add_column("severity")
    table.add_column("scene / file")
    table.add_column("problem")
    styles = {"error": "red", "warning": "yellow", "skipped": "dim"}
    for problem in report.errors + report.warnings + report.skipped:
        style = styles[problem.severity]
        table.add_row(f"[{style}]{problem.severity}[/{style}]", f"{problem.scene}/{problem.file}", problem.message)
    if report.problems:
        console.print(table)
    else:
        console.print(f"[green]{table.title}; no problems.[/green]")
    if report.failed:
        console.print(f"[red]{len(report.failed)} scene(s) failed: {', '.join(report.failed)}. Fix the files above and rerun.[/red]")
