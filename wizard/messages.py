"""Provides the wizard's messages: workers and screens post them upward; nothing here does work.

Each message is a dataclass (Textual initialises a dataclass Message in `__post_init__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from engine.hardware import HardwareInfo
from wizard.checks import CheckResult
from wizard.run.tail import TailResult


@dataclass
class HardwareProbed(Message):
    """The probe worker finished (and read the families' model list, so the model screen opens at once)."""

    hardware: HardwareInfo


@dataclass
class CheckFinished(Message):
    """A check worker finished; `kind` is `checkpoint`, `data`, `table` or `memory`; `key` names its input."""

    kind: str
    key: Any
    result: CheckResult


@dataclass
class ProfileChecked(Message):
    """The profile validation worker finished: `errors` is empty when the draft is valid."""

    errors: list[str]
    generation: int


@dataclass
class EventsArrived(Message):
    """The tail worker read new events (or saw the child exit)."""

    result: TailResult


@dataclass
class StepDone(Message):
    """A wizard screen is answered: the app shows the next one."""


@dataclass
class StartRun(Message):
    """The Review screen saved the profile: the app opens the dashboard on it."""

    profile_path: Any


@dataclass
class ActionOutput(Message):
    """A follow-up command (`lora3d eval`, `lora3d predict`) printed lines."""

    action: str
    lines: list[str]


@dataclass
class ActionFinished(Message):
    """A follow-up command ended with `returncode` (None: it could not start; `error` says why)."""

    action: str
    returncode: int | None
    error: str = ""
