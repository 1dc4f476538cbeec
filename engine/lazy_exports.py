"""Provides `lazy_exports`: a package's public names, each imported from its submodule on first use (PEP 562).

A family package or `engine.memory` is imported for its light parts (a family's CLI entry, the memory tiers
on the wizard's first screen); its models, PEFT and diffusers take seconds to import, so the names that need
them are bound only when someone reads them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: `exports[name]` is the submodule (relative to `package`) defining `name`.

    Usage, in the package's `__init__.py`: `__getattr__ = lazy_exports(__name__, _EXPORTS)`.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__


__all__ = ["lazy_exports"]
