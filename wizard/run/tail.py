"""Provides the events.jsonl follower the dashboard's thread worker runs.

The worker only reads the file and posts what it found; all state lives on the UI side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.train.events import EventTail
from wizard.run.launcher import pid_alive

POLL_SECONDS = 0.5
"""How often the file is read; the trainer flushes per event, so this bounds the dashboard's lag."""


@dataclass
class TailResult:
    """One poll: the new events, and whether the child (if we know it) has exited."""

    events: list[dict[str, Any]]
    returncode: int | None = None
    process_gone: bool = False


def follow(path: Path, emit: Callable[[TailResult], None], should_stop: Callable[[], bool],
           returncode: Callable[[], int | None] | None = None, watch_pid: bool = False,
           poll_seconds: float = POLL_SECONDS) -> None:
    """Polls `path` until an `end` event, the child's exit, or `should_stop()`.

    Args:
        path: the run's events.jsonl (it may not exist yet).
        emit: called with each non-empty poll result (the worker's post_message).
        should_stop: the worker's cancellation flag.
        returncode: the child's exit code getter (runs we started).
        watch_pid: for runs we reattached to: stop when the process named by the `start` event's
            `pid` is gone without an `end` event (killed, or the machine rebooted).
    """
    tail = EventTail(path)
    pid: int | None = None
    while not should_stop():
        events = tail.poll()
        ended = any(e.get("type") == "end" for e in events)
        for event in events:
            if event.get("type") == "start":
                pid = event.get("pid")
        code = returncode() if returncode is not None else None
        gone = watch_pid and pid is not None and not ended and not pid_alive(pid)
        if code is not None or gone:
            events += tail.poll()  # the last lines written just before the exit
            ended = ended or any(e.get("type") == "end" for e in events)
        if events or code is not None or gone:
            emit(TailResult(events, returncode=code, process_gone=gone and not ended))
        if ended or code is not None or gone:
            return
        time.sleep(poll_seconds)
