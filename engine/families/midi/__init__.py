"""Provides the MIDI-3D family plugin: data preparation, latent cache, flow-matching LoRA training, inference.

The public names load on first use (PEP 562): data-preparation workers import `prepare` alone, without
diffusers and the models.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"MidiDataOptions": "family", "MidiFamily": "family", "MidiModelOptions": "family"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
