"""Provides the project's error types: every user-facing failure is a Lora3dError (exit code 2).

The Python API raises the same errors the CLI prints. So that callers can keep the idioms they use with
PEFT and torch, an argument or file-content error is also a `ValueError`, a missing file is also a
`FileNotFoundError`.
"""

from __future__ import annotations


class Lora3dError(Exception):
    """A problem the user can fix; the CLI prints the message alone and exits with code 2.

    Messages follow `<file or key>: <what is wrong>, got <value!r>. <how to fix>.`
    """

    exit_code = 2


class ProfileError(Lora3dError, ValueError):
    """A profile or API argument that does not validate (YAML syntax, unknown key, wrong type, impossible value)."""


class DataError(Lora3dError, ValueError):
    """A dataset file or folder that is missing, malformed or inconsistent."""


class CheckpointError(Lora3dError, ValueError):
    """A checkpoint or adapter that is missing, corrupt, unsafe or for another architecture."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint or adapter path that does not exist."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset file or folder that does not exist."""


class HardwareError(Lora3dError):
    """A setting the machine cannot run (fp16 on CPU, a missing backend, out of memory at batch 1)."""


class Lora3dWarning(UserWarning):
    """Something lora3d assumed, converted or skipped on the user's behalf (never silently)."""
