"""Provides the family registry: every package under `engine/families/` is a family, plus plugin modules.

A built-in family is found by its folder: the package's `__init__.py` declares `ENTRY` (a `FamilyEntry`), and
its Family class is imported on first use. A plugin module named in `LORA3D_PLUGINS` (comma-separated)
registers its class with `register_family` when imported. Each family has one instance: families hold no
per-run state (that lives in the Recipe and the objects built from it).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from engine.errors import ProfileError
from engine.families.entry import FamilyEntry

if TYPE_CHECKING:  # the registry stays light: Family pulls in torch and PEFT
    from engine.families.base import Family

_PACKAGE = __name__.rpartition(".")[0]

_PLUGINS: dict[str, type] = {}
_INSTANCES: dict[str, Family] = {}


def register_family(cls: type) -> type:
    """Registers a Family subclass under `cls.name` (usable as a decorator)."""
    _PLUGINS[cls.name] = cls
    _INSTANCES.pop(cls.name, None)
    return cls


def _load_plugins() -> None:
    """Imports the modules named in LORA3D_PLUGINS; each registers its families."""
    for module in filter(None, (m.strip() for m in os.environ.get("LORA3D_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ProfileError(
                f"LORA3D_PLUGINS: the family plugin module {module!r} cannot be imported ({exc}). "
                "Fix the module name or add its folder to PYTHONPATH, or unset LORA3D_PLUGINS."
            ) from None


@cache
def _builtin_entries() -> dict[str, FamilyEntry]:
    """The entries of the packages under engine/families/ (each a light import)."""
    entries = {}
    for info in pkgutil.iter_modules(importlib.import_module(_PACKAGE).__path__):
        if info.ispkg:
            entry = getattr(importlib.import_module(f"{_PACKAGE}.{info.name}"), "ENTRY", None)
            if isinstance(entry, FamilyEntry):
                entries[entry.name] = entry
    return entries


def _entry_of(cls: type) -> FamilyEntry:
    return FamilyEntry(cls.name, cls.label, f"{cls.__module__}:{cls.__qualname__}", tuple(cls.commands), cls.demo)


def family_entries() -> dict[str, FamilyEntry]:
    """Every family's entry by name (built-in folders, then plugins), without importing the families."""
    _load_plugins()
    entries = dict(_builtin_entries())
    entries.update({name: _entry_of(cls) for name, cls in _PLUGINS.items()})
    return dict(sorted(entries.items()))


def family_names() -> list[str]:
    return list(family_entries())


def get_family(name: str) -> Family:
    """The named family's instance (one per family); KeyError when unknown."""
    if name in _INSTANCES:
        return _INSTANCES[name]
    _load_plugins()
    if name in _PLUGINS:
        cls = _PLUGINS[name]
    else:
        entry = _builtin_entries()[name]
        module_name, cls_name = entry.family.split(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
    instance = _INSTANCES[name] = cls()
    return instance
