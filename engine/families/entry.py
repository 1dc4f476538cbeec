"""Provides a family's light entry: its name, label, CLI subcommands and demo, readable without importing it.

`lora3d --help` lists every family's subcommands and `lora3d demo` its demos; importing a family (its
models, PEFT, diffusers) takes seconds, so a family package declares this entry in its `__init__.py` and
the registry imports the family class only when it is used.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CliCommand:
    """A family subcommand of `lora3d` (e.g. `import-3dgs`).

    Attributes:
        name: the subcommand.
        help: one line for `lora3d --help`.
        arguments: adds the subcommand's arguments to its parser.
        run: `module:function` taking the parsed arguments and returning the exit code, imported when run.
    """

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: str


@dataclass(frozen=True)
class FamilyEntry:
    """What the CLI and the registry know of a family before importing it.

    Attributes:
        name: the family name (`model.family` in a profile).
        label: one line naming the family and its base model.
        family: `module:Class` of the Family subclass.
        commands: the family's own `lora3d` subcommands.
        demo: `module:function` of its built-in demo (`lora3d demo NAME`), or None.
        merged_formats: lines for `lora3d merge --help`: which tools load the family's merged files.
    """

    name: str
    label: str
    family: str
    commands: tuple[CliCommand, ...] = ()
    demo: str | None = None
    merged_formats: str = ""
