"""Provides the follow-up commands a finished run offers (evaluate, predict on a scene), read from its family.

A family declares its own `lora3d` subcommands in its entry (`FamilyEntry.commands`). Those named `eval`
(`lora3d eval RUN_DIR`) and `predict` (`lora3d predict RUN_DIR --scene PATH --out DIR`) take a run
directory; the dashboard offers them after the run's end event and runs them as child processes, never in
its own process, through `python -m wizard.run.actions FAMILY COMMAND ARGS...`: the family's own command
parser and function, exactly what `lora3d COMMAND` runs, without building the whole CLI (whose
subcommand names are shared by every family).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.errors import Lora3dError
from engine.families.entry import CliCommand
from engine.families.registry import family_entries
from wizard.run.launcher import child_env

ACTION_LABELS = {"eval": "evaluate", "predict": "predict on a scene"}
"""The follow-up commands the dashboard looks for in a family's entry, with their labels."""

EXIT_USAGE = 2


@dataclass(frozen=True)
class RunAction:
    """A follow-up command of a family: `name` is the `lora3d` subcommand, `help` the family's one line."""

    family: str
    name: str
    label: str
    help: str

    def arguments(self, run_dir: Path, scene: Path | None = None, out: Path | None = None) -> list[str]:
        """The subcommand's arguments (after its name)."""
        args = [str(run_dir)]
        if self.name == "predict":
            if scene is None or out is None:
                raise ValueError("predict needs a scene and an output folder")
            args += ["--scene", str(scene), "--out", str(out)]
        return args

    def command_line(self, run_dir: Path, scene: Path | None = None, out: Path | None = None) -> str:
        """The equivalent headless command, as the user would type it."""
        return " ".join(["lora3d", self.name, *self.arguments(run_dir, scene, out)])

    def argv(self, run_dir: Path, scene: Path | None = None, out: Path | None = None) -> list[str]:
        """The child's argv: this interpreter running the family's command."""
        return [sys.executable, "-m", "wizard.run.actions", self.family, self.name,
                *self.arguments(run_dir, scene, out)]


def run_actions(family: str | None) -> list[RunAction]:
    """The follow-up commands `family` declares, in the order of ACTION_LABELS (none for an unknown family)."""
    entry = family_entries().get(family or "")
    if entry is None:
        return []
    commands = {command.name: command for command in entry.commands}
    return [RunAction(entry.name, name, label, commands[name].help)
            for name, label in ACTION_LABELS.items() if name in commands]


def run_family(run_dir: Path, start: dict | None = None) -> str | None:
    """The family of a run: its start event's `family`, else `model.family` of its resolved profile."""
    if start and start.get("family"):
        return str(start["family"])
    resolved = run_dir / "profile.resolved.yaml"
    if not resolved.is_file():
        return None
    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return str(model["family"]) if isinstance(model, dict) and model.get("family") else None


def start_action(argv: list[str], columns: int = 100) -> subprocess.Popen:
    """Starts a follow-up command with its output (stdout and stderr together) on a text pipe."""
    env = child_env()
    env["COLUMNS"] = str(max(40, columns))  # tables are drawn for the pane that shows them
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=env, cwd=os.getcwd(), bufsize=1)


def _command(family: str, name: str) -> CliCommand:
    entry = family_entries().get(family)
    if entry is None:
        raise Lora3dError(f"family {family!r}: not found. Use one of {', '.join(family_entries())}.")
    for command in entry.commands:
        if command.name == name:
            return command
    names = ", ".join(c.name for c in entry.commands) or "none"
    raise Lora3dError(f"the {family} family has no `{name}` command (it has: {names}).")


def main(argv: list[str] | None = None) -> int:
    """`python -m wizard.run.actions FAMILY COMMAND ARGS...`: runs the family's command as `lora3d` does."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(argv) < 2:
        print("usage: python -m wizard.run.actions FAMILY COMMAND [ARGS...]", file=sys.stderr)
        return EXIT_USAGE
    try:
        command = _command(argv[0], argv[1])
        parser = argparse.ArgumentParser(prog=f"lora3d {command.name}", description=command.help)
        command.arguments(parser)
        args = parser.parse_args(argv[2:])
        module, function = command.run.split(":")
        return int(getattr(importlib.import_module(module), function)(args) or 0)
    except Lora3dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
