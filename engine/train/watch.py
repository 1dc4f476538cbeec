"""Provides the line-per-event follower of a run directory (`lora3d watch --plain`, the plain wizard).

Read-only: it never writes the run directory and never takes its lock, so it can follow a run that
another process is training. It prints one line per event until the run's `end` event, or until the
training process is gone without one. A `preview` event's line names its PNG files joined to the run
directory, so they can be opened as printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import psutil

from engine.train.events import MAX_LINE_BYTES, EventTail
from engine.train.run_state import RunState, event_line


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id still runs (a zombie counts as ended)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but we may not look at it
        return True


def _print_new(tail: EventTail, state: RunState, out: TextIO, skipped: list[int], run_dir: Path) -> None:
    while True:
        for event in tail.poll():  # as written: the state and the line read them typed, lists included
            state.apply([event])
            line = event_line(event, state, run_dir)
            if line:
                print(line, file=out, flush=True)
        if tail.skipped_lines > skipped[0]:
            print(f"warning: skipped {tail.skipped_lines - skipped[0]} event line(s) longer than "
                  f"{MAX_LINE_BYTES // 1024**2} MB in {tail.path}", file=out, flush=True)
            skipped[0] = tail.skipped_lines
        if tail.at_end:
            return


def watch_plain(run_dir: Path, out: TextIO, follow_run: bool = True, poll_seconds: float = 0.5,
                returncode: Callable[[], int | None] | None = None) -> RunState:
    """Prints the run's events as lines until its end event (or at once when `follow_run` is False).

    Args:
        run_dir: the run directory; its events.jsonl may not exist yet.
        out: where the lines go.
        follow_run: keep polling until the run ends; False prints what is there and returns.
        returncode: the exit code getter of a child we started; without it, the `start` event's pid is
            watched, and a vanished process without an `end` event ends the watch.

    Raises:
        CheckpointError: events.jsonl is a folder or cannot be read.
    """
    tail = EventTail(run_dir / "events.jsonl")
    state = RunState()
    skipped = [0]
    while True:
        _print_new(tail, state, out, skipped, run_dir)
        if state.finished or not follow_run:
            return state
        code = returncode() if returncode is not None else None
        pid = state.start.get("pid")
        if code is not None or (returncode is None and pid and not pid_alive(pid)):
            _print_new(tail, state, out, skipped, run_dir)  # the last lines written just before the exit
            if not state.finished:
                print("the training process ended without an end event; see train.log in the run directory",
                      file=out, flush=True)
            return state
        time.sleep(poll_seconds)
