"""Provides the wizard's messages: workers and screens post them upward; nothing here does work."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from engine.hardware import HardwareInfo
from wizard.checks import CheckResult
from wizard.run.tail import TailResult


class HardwareProbed(Message):
    """The probe worker finished."""

    def __init__(self, hardware: HardwareInfo) -> None:
        super().__init__()
        self.hardware = hardware


class CheckFinished(Message):
    """A check worker finished; `kind` is `checkpoint`, `data`, `table` or `memory`; `key` names its input."""

    def __init__(self, kind: str, key: Any, result: CheckResult) -> None:
        super().__init__()
        self.kind = kind
        self.key = key
        self.result = result


class ProfileChecked(Message):
    """The profile validation worker finished: `errors` is empty when the draft is valid."""

    def __init__(self, errors: list[str], generation: int) -> None:
        super().__init__()
        self.errors = errors
        self.generation = generation


class EventsArrived(Message):
    """The tail worker read new events (or saw the child exit)."""

    def __init__(self, result: TailResult) -> None:
        super().__init__()
        self.result = result


class StepDone(Message):
    """A wizard screen is answered: the app shows the next one."""


class StartRun(Message):
    """The Review screen saved the profile: the app opens the dashboard on it."""

    def __init__(self, profile_path: Any) -> None:
        super().__init__()
        self.profile_path = profile_path
