"""Provides the one message for a write that failed on the disk's side: full, read-only, or gone.

Writes fail as `OSError` from Python and as `SafetensorError` from safetensors (whose text carries the
OS error code, e.g. `I/O error: No space left on device (os error 28)`); both are mapped here by their
error number, so every writer says the same thing and names the same fix.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from engine.errors import CheckpointError, Lora3dError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
GONE = frozenset({errno.ENOENT, errno.ESTALE})
TRAIN_ELSEWHERE = "train into another folder with --out NEW_DIR (`output.dir`)"
"""The `elsewhere` of every write a training run makes."""
_OS_CODE = re.compile(r"(?:os error |code: )(\d+)")


def write_errno(exc: BaseException) -> int | None:
    """The OS error number of a failed write (OSError, or safetensors' SafetensorError), if it has one."""
    if isinstance(exc, OSError):
        return exc.errno
    if type(exc).__name__ == "SafetensorError":  # by name: importing safetensors here would slow `lora3d --help`
        match = _OS_CODE.search(str(exc))
        return int(match.group(1)) if match else None
    return None


def is_disk_problem(exc: BaseException) -> bool:
    """A full disk, a read-only folder or a vanished file: things the user fixes, not bugs."""
    return write_errno(exc) in NO_SPACE | READ_ONLY | GONE


_STAGED = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{6,}\.tmp$")
"""`engine.atomic`'s temporary names (`.NAME.XXXXXXXX.tmp`): the message names NAME, the file being written."""


def _destination(target: Path) -> Path:
    match = _STAGED.match(target.name)
    return target.with_name(match.group(1)) if match else target


def _nearest_folder(path: Path) -> Path:
    """The closest existing folder above `path` (the one whose permissions matter)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def write_error(target: Path | str, exc: BaseException, what: str = "could not be written", then: str = "",
                elsewhere: str = "write somewhere else",
                more_space: str = "Free disk space or set `output.dir` on a larger disk") -> CheckpointError:
    """The error to raise for a failed write of `target`.

    Args:
        target: the file or folder being written.
        exc: the OSError or SafetensorError.
        what: the failure in words, e.g. `checkpoint could not be written`.
        then: what to do once the disk is fixed (e.g. `then continue with --resume`), appended to the fix.
        elsewhere: the way to write somewhere else, for a read-only folder (e.g. `--out NEW_DIR`).
        more_space: the fix for a full disk.
    """
    code = write_errno(exc)
    target = _destination(Path(target))
    if code in NO_SPACE:
        reason, fix = "No space left on device", more_space
    elif code in READ_ONLY:
        reason = "read-only file system" if code == errno.EROFS else "permission denied"
        fix = f"Make {_nearest_folder(target)} writable, or {elsewhere}"
    elif code in GONE:
        reason = "a file or folder vanished during the write"
        fix = "Make sure no other program deletes files in this folder"
    else:
        reason = getattr(exc, "strerror", None) or str(exc)
        fix = "Check the disk"
    return CheckpointError(f"{target}: {what} ({reason}). {fix}{', ' + then if then else ''}.")


def write_error_within(folder: Path, exc: BaseException, then: str = "",
                       elsewhere: str = "write somewhere else") -> CheckpointError | None:
    """`write_error` for a full-disk / read-only failure of a write inside `folder`; None for any other error
    (a failure elsewhere, e.g. reading a data file, is not this folder's to explain)."""
    if isinstance(exc, Lora3dError) or not is_disk_problem(exc):
        return None
    filename = getattr(exc, "filename", None)
    if filename is not None and not Path(filename).resolve().is_relative_to(Path(folder).resolve()):
        return None
    return write_error(filename or folder, exc, "could not be written", then=then, elsewhere=elsewhere)
