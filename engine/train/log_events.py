"""Provides the bridge from the families' log records to the run's event log.

A family reports slow set-up work (indexing thousands of scene folders, reading a cache) through Python
logging, as a library should; while the trainer sets a run up, those records also become `info` and
`warning` events, so the dashboard, `lora3d watch` and events.jsonl show them instead of a silent wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FAMILY_LOGGER = "engine.families"
"""Every family module logs under this name (`logging.getLogger(__name__)`)."""


class _EventHandler(logging.Handler):
    def __init__(self, emit: Callable[..., None]) -> None:
        super().__init__(level=logging.INFO)
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        kind = "warning" if record.levelno >= logging.WARNING else "info"
        try:
            self._emit(kind, message=record.getMessage())
        except Exception:  # logging must never break the work it reports on
            self.handleError(record)


@contextmanager
def family_logs_as_events(emit: Callable[..., None], logger_name: str = FAMILY_LOGGER) -> Iterator[None]:
    """Within the block, INFO and higher records under `logger_name` are also emitted as events."""
    logger = logging.getLogger(logger_name)
    handler = _EventHandler(emit)
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
