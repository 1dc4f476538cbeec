"""Provides run control: stop and save requests from signals and from files dropped in the run directory.

Ctrl-C and SIGTERM ask the run to stop at the next step boundary (a second Ctrl-C aborts at once); a
`STOP` or `SAVE` file in the run directory does the same for tools that cannot send signals (the
wizard). Requests are combined over all processes, so every process stops at the same step.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch

STOP_FILE = "STOP"
SAVE_FILE = "SAVE"


class RunControl:
    """Stop/save requests of one run. `stop_reason` is set by a signal, a STOP file or `request_stop`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stop_reason: str | None = None
        self._previous: list[tuple[int, Any]] = []

    def request_stop(self, reason: str) -> None:
        """Ends the run at the next step boundary, as a STOP file would (checkpoint, partial adapter)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM request a stop; only possible from the main thread (else a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            if self.stop_reason is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: abort now
            self.stop_reason = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous.append((sig, signal.signal(sig, handler)))

    def restore_signal_handlers(self) -> None:
        for sig, previous in reversed(self._previous):
            signal.signal(sig, previous)
        self._previous = []

    # ------------------------------------------------------------------ files
    def clear_files(self) -> None:
        """Removes STOP/SAVE files a previous run left, so they do not stop this one at its first step."""
        for name in (STOP_FILE, SAVE_FILE):
            (self.run_dir / name).unlink(missing_ok=True)

    def poll_files(self, accelerator: Any) -> tuple[bool, bool]:
        """(stop, save) requested through files in the run directory, agreed on by every process."""
        stop = (self.run_dir / STOP_FILE).exists()
        save = (self.run_dir / SAVE_FILE).exists()
        flags = torch.tensor([float(stop), float(save)], device=accelerator.device)
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def done_saving(self) -> None:
        (self.run_dir / SAVE_FILE).unlink(missing_ok=True)

    def done_stopping(self) -> None:
        (self.run_dir / STOP_FILE).unlink(missing_ok=True)
