"""Provides the run's event log, events.jsonl: the writer, and the one reader every display uses.

One JSON object per line, flushed per event. The wizard's dashboard, `lora3d watch` and the headless
display read only this file, through `read_events` / `EventTail` here and the typed events of
`engine.train.event_types`. Readers tolerate a torn last line (a process killed mid-write) and skip
it; the writer starts every event on a new line, so one torn line never corrupts the next. Reading is
bounded: a line over `MAX_LINE_BYTES` is skipped (and counted) without being held in memory, and a
line nested too deeply for the JSON parser is skipped like a torn one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from engine.train.event_types import Event, parse_event
from engine.write_errors import TRAIN_ELSEWHERE, write_error

EVENT_TYPES = ("start", "step", "eval", "preview", "checkpoint", "warning", "error", "end", "oom", "info")
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

    def __init__(self, path: Path, enabled: bool = True, then: Callable[[], str] | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.then = then
        """What to do once a failed write is fixed (the trainer's resume advice), for the error message."""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._file = None
        if enabled:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a+b")  # noqa: SIM115 - kept open for the run
                needs_newline = False
                if self._file.seek(0, os.SEEK_END) > 0:
                    self._file.seek(-1, os.SEEK_END)
                    needs_newline = self._file.read(1) != b"\n"
                if needs_newline:  # a torn line from a killed run: end it so the next event parses
                    self._file.write(b"\n")
            except OSError as exc:
                raise self._write_error(exc) from None

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        assert type in EVENT_TYPES, type
        event = {"type": type, "time": time.time(), **_clean(fields)}
        if self._file is not None:
            try:
                self._file.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
                self._file.flush()
            except OSError as exc:
                file, self._file = self._file, None  # stop writing: a further attempt would fail the same way
                with contextlib.suppress(OSError):
                    file.close()
                raise self._write_error(exc) from None
        for listener in self.listeners:
            listener(event)
        return event

    def _write_error(self, exc: OSError) -> CheckpointError:
        then = self.then() if self.then is not None else ""
        return write_error(self.path, exc, "the event log could not be written", then=then, elsewhere=TRAIN_ELSEWHERE)

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


MAX_LINE_BYTES = 4 * 1024 * 1024
"""Longest event line a reader accepts; the writer's longest (the start event's module table) is far below."""
_CHUNK_BYTES = 1024 * 1024


class _LineSplitter:
    """Splits a byte stream into lines of at most `limit` bytes; longer lines are dropped and counted."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self.partial = b""
        self.skipping = False
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self.skipping and len(self.partial) + len(piece) > self.limit:
                self.skipping, self.partial = True, b""  # an over-long line: drop what was held of it
            if not self.skipping:
                self.partial += piece
            if end < 0:
                return lines
            if self.skipping:
                self.skipped += 1
                self.skipping = False
            elif self.partial.strip():
                lines.append(self.partial)
            self.partial = b""
            start = end + 1

    def finish(self) -> bytes | None:
        """The last line when the stream ends without a newline (a torn write, or a file cut short)."""
        if self.skipping:
            self.skipped += 1
            self.skipping = False
        last, self.partial = self.partial, b""
        return last if last.strip() else None


def _open_log(path: Path):
    """Opens an event log for reading; a folder or an unreadable file is a clear error."""
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except IsADirectoryError:
        raise CheckpointError(
            f"{path}: is a folder, not an event log. A run directory's events.jsonl is the file a run writes; "
            "pass the run directory `lora3d train --out` wrote."
        ) from None
    except PermissionError as exc:
        raise CheckpointError(f"{path}: the event log cannot be read ({exc.strerror}). Check its permissions.") from None


def check_event_log(path: Path) -> None:
    """Raises the reader's CheckpointError when `path` exists but is a folder or unreadable (for a command
    that wants to refuse before it starts following a run)."""
    with contextlib.suppress(FileNotFoundError):
        _open_log(path).close()


def parse_line(raw: bytes | str) -> dict[str, Any] | None:
    """One event as a dict, or None for a torn, empty, over-nested or non-event line."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and bad UTF-8 are ValueErrors
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


def iter_events(path: Path, start: int = 0) -> Iterator[dict[str, Any]]:
    """Every complete event in the file from byte `start`, as dicts; bad lines are skipped."""
    splitter = _LineSplitter()
    with _open_log(path) as f:
        f.seek(start)
        while chunk := f.read(_CHUNK_BYTES):
            for line in splitter.feed(chunk):
                if (event := parse_line(line)) is not None:
                    yield event
    last = splitter.finish()
    if last is not None and (event := parse_line(last)) is not None:
        yield event


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete event in the file; torn, garbled and over-long lines are skipped."""
    return list(iter_events(path))


def read_typed_events(path: Path) -> list[Event]:
    """Every complete event in the file, typed (`engine.train.event_types`)."""
    return [e for e in map(parse_event, iter_events(path)) if e is not None]


class EventTail:
    """Incremental reader for a growing events.jsonl: `poll()` returns the events added since the last call.

    A line without its newline yet is held back until it is complete. One poll reads at most
    `max_bytes`; `at_end` says whether it reached the end of what is written so far. `skipped_lines`
    counts lines dropped for being longer than `MAX_LINE_BYTES`.
    """

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.at_end = True
        self._offset = 0
        self._splitter = _LineSplitter()

    @property
    def skipped_lines(self) -> int:
        return self._splitter.skipped

    def poll(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        try:
            f = _open_log(self.path)
        except FileNotFoundError:
            return events
        with f:
            f.seek(self._offset)
            budget = self.max_bytes
            self.at_end = False
            while budget > 0:
                chunk = f.read(min(_CHUNK_BYTES, budget))
                if not chunk:
                    self.at_end = True
                    break
                self._offset += len(chunk)
                budget -= len(chunk)
                events.extend(e for e in map(parse_line, self._splitter.feed(chunk)) if e is not None)
        return events

    def poll_typed(self) -> list[Event]:
        return [e for e in map(parse_event, self.poll()) if e is not None]
