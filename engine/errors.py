"""Provides the project's error types: every user-facing failure is a Lora3dError (exit code 2)."""

from __future__ import annotations


class Lora3dError(Exception):
    """A problem the user can fix; the CLI prints the message alone and exits with code 2.

    Messages follow `<file or key>: <what is wrong>, got <value!r>. <how to fix>.`
    """

    exit_code = 2


class ProfileError(Lora3dError):
    """A profile that does not validate (YAML syntax, unknown key, wrong type, impossible value)."""


class DataError(Lora3dError):
    """A dataset file or folder that is missing, malformed or inconsistent."""


class CheckpointError(Lora3dError):
    """A checkpoint or adapter that is missing, corrupt, unsafe or for another architecture."""


class HardwareError(Lora3dError):
    """A setting the machine cannot run (fp16 on CPU, a missing backend, out of memory at batch 1)."""
