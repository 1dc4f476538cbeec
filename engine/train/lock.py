"""Provides the run directory's lock: one training process per run directory, for the run's whole life.

An exclusive advisory lock (`flock`, through the maintained `filelock` library) on `<run_dir>/lock.json`,
taken before the run writes anything and held until it ends. The operating system releases it when the
process dies, however it dies, so a stale lock never blocks a `--resume`. The holder writes its pid into
the lock file, so a second process can say who holds it. Readers (`lora3d watch`, the dashboard) never
take it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from engine.errors import Lora3dError
from engine.write_errors import TRAIN_ELSEWHERE, write_error

LOCK_FILE = "lock.json"
"""The lock file: `flock`ed for the run's life, holding the owner's pid, host and start time as JSON."""


class RunDirLockedError(Lora3dError):
    """Another process is training in this run directory."""


def _write_owner(fd: int) -> None:
    """Records this process in the lock file it now holds (only for the other process's message)."""
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError:
        pass  # a full disk: the lock holds all the same; the message then lacks the pid


def lock_owner(run_dir: Path) -> dict | None:
    """The owner record in the run directory's lock file (it may be stale: check `is_locked` first)."""
    try:
        data = json.loads((run_dir / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder_text(run_dir: Path) -> str:
    owner = lock_owner(run_dir) or {}
    pid, host = owner.get("pid"), owner.get("host")
    if not isinstance(pid, int):
        return "another lora3d process"
    where = f" on {host}" if isinstance(host, str) and host != socket.gethostname() else ""
    return f"another lora3d process (pid {pid}{where})"


class RunLock:
    """The lock of one run directory; `acquire()` or a RunDirLockedError naming the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._lock = FileLock(str(self.path), timeout=0, on_acquired=_write_owner)

    def acquire(self) -> None:
        """Takes the lock without waiting.

        Raises:
            RunDirLockedError: another process holds it; the message names its pid and what to do.
            CheckpointError: the lock file cannot be created (read-only folder, full disk).
        """
        try:
            self._lock.acquire()
        except Timeout:
            raise RunDirLockedError(
                f"{self.run_dir}: {_holder_text(self.run_dir)} is training in this run directory. Wait for it to "
                f"end, stop it (`touch {self.run_dir / 'STOP'}`; it saves a checkpoint), or train into another "
                f"folder with --out NEW_DIR. `lora3d watch {self.run_dir}` follows it without interfering."
            ) from None
        except OSError as exc:
            raise write_error(self.path, exc, "the run directory's lock could not be taken", then="then rerun",
                              elsewhere=TRAIN_ELSEWHERE) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.is_locked


def is_locked(run_dir: Path) -> bool:
    """Whether a process holds the run directory's lock now (creates nothing, holds nothing)."""
    if not (run_dir / LOCK_FILE).is_file():
        return False
    probe = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    probe.release()
    return False
