"""Provides the run side of the wizard: launching `lora3d train`, following events.jsonl, the run state."""

from wizard.run.launcher import LaunchedRun, launch_run, log_tail, pid_alive, request, train_command
from wizard.run.state import RunState, format_bytes, format_duration
from wizard.run.tail import TailResult, follow

__all__ = [
    "LaunchedRun",
    "RunState",
    "TailResult",
    "follow",
    "format_bytes",
    "format_duration",
    "launch_run",
    "log_tail",
    "pid_alive",
    "request",
    "train_command",
]
