"""Provides atomic writes: a file or folder appears complete at its final path, or not at all.

Everything lora3d writes for later use (scenes, datasets, adapters, merged checkpoints) goes through
here, so a kill, a full disk or an exception never leaves a half-written result where a reader looks.

Temporary names are hidden siblings of the destination, `.<name>.<host>-<pid>.<random>.tmp` (and `.old`
for a folder being replaced), so that `clean_stale_temporaries` can tell what a killed process left
(its pid no longer runs on this host) from what a running one is writing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"


def _owner() -> str:
    """This process, as temporary names record it (`<host>-<pid>`)."""
    return f"{_HOST}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """True when process `pid` runs on this machine (or cannot be asked: then it is assumed to run)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Removes the temporaries in `folder` that killed processes left; returns what was removed.

    Args:
        folder: where the destinations lie.
        name: the destination whose temporaries to remove; None: any destination's.

    Only names written by this module's helpers whose process no longer runs on this host are removed; a
    write in progress (this or another process) is left alone.
    """
    target = re.escape(name) if name is not None else r".+"
    pattern = re.compile(rf"\.{target}\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)\.[^/.]+\.(?:tmp|old)")
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or match["host"] != _HOST or pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def replace_folder(tmp: Path, dest: Path) -> None:
    """Moves the finished folder `tmp` to `dest`; an older `dest` is moved aside first (a folder cannot be
    replaced in one rename) and removed after, so readers see the old or the new folder, never a mix."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{_owner()}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


@contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside `dest`; fill it, and on a clean exit it becomes `dest`.

    On an exception the temporary folder is removed and `dest` is left exactly as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{_owner()}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        replace_folder(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yields a temporary path beside `dest` to write; on a clean exit it replaces `dest` in one rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{_owner()}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def publish_folder(tmp: Path, dest: Path) -> Path:
    """Renames the finished folder `tmp` to `dest` unless another process published `dest` first; then `tmp`
    is discarded. For caches (demo bases, synthetic datasets), where any complete copy is as good as ours."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:  # a non-empty `dest` already exists: the other writer won
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
