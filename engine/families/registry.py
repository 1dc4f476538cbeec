"""Provides the family registry: a family name in a profile maps to its plugin class here."""

from __future__ import annotations

import importlib
import os

from engine.errors import ProfileError
from engine.families.base import Family

# Built-in families are imported lazily: each pulls in its model code.
_BUILTIN = {
    "scenesplat": "engine.families.scenesplat.family:SceneSplatFamily",
    "midi": "engine.families.midi.family:MidiFamily",
}
_REGISTERED: dict[str, type[Family]] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Registers a family class under `cls.name` (usable as a decorator)."""
    _REGISTERED[cls.name] = cls
    return cls


def _load_plugins() -> None:
    """Imports the modules named in LORA3D_PLUGINS (comma-separated); each registers its families."""
    for module in filter(None, (m.strip() for m in os.environ.get("LORA3D_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ProfileError(
                f"LORA3D_PLUGINS: the family plugin module {module!r} cannot be imported ({exc}). "
                "Fix the module name or add its folder to PYTHONPATH, or unset LORA3D_PLUGINS."
            ) from None


def family_names() -> list[str]:
    _load_plugins()
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_family(name: str) -> Family:
    """An instance of the named family; KeyError when unknown (the profile loader reports it)."""
    _load_plugins()
    if name in _REGISTERED:
        return _REGISTERED[name]()
    if name not in _BUILTIN:
        raise KeyError(name)
    module_name, cls_name = _BUILTIN[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    _REGISTERED[name] = cls
    return cls()
