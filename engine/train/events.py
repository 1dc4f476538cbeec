"""Provides the run's event log, events.jsonl: one typed JSON object per line, flushed per event.

The wizard's dashboard, `lora3d watch` and any other tool read only this file. Readers tolerate a torn
last line (a process killed mid-write) and skip it; the writer starts every event on a new line, so
one torn line never corrupts the next.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError

EVENT_TYPES = ("start", "step", "eval", "checkpoint", "warning", "error", "end", "oom", "info")
END_STATUSES = ("completed", "stopped", "failed")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so every reader can still parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Appends events to `path` and forwards each to listeners (the headless progress display)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._file = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
            if needs_newline:  # a torn line from a killed run: end it so the next event parses
                self._file.write("\n")

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        assert type in EVENT_TYPES, type
        event = {"type": type, "time": time.time(), **_clean(fields)}
        if self._file is not None:
            try:
                self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
                self._file.flush()
            except OSError as exc:
                self._file = None  # stop writing: a further attempt would fail the same way
                raise CheckpointError(
                    f"{self.path}: the event log could not be written ({exc.strerror or exc}). Free disk space, "
                    "then continue with --resume from the newest checkpoint."
                ) from None
        for listener in self.listeners:
            listener(event)
        return event

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                pass  # already reported by emit, or nothing left to lose
            finally:
                self._file.close()
                self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete event in the file; torn or garbled lines are skipped."""
    return list(iter_events(path))


def iter_events(path: Path, start: int = 0) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        f.seek(start)
        for raw in f:
            event = parse_line(raw)
            if event is not None:
                yield event


def parse_line(raw: bytes | str) -> dict[str, Any] | None:
    """One event, or None for a torn, empty or non-event line."""
    try:
        event = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or "type" not in event:
        return None
    return event


class EventTail:
    """Incremental reader for a growing events.jsonl: `poll()` returns the events added since last call.

    A line without its newline yet is held back until it is complete.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [e for e in (parse_line(line) for line in lines if line.strip()) if e is not None]
