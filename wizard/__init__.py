"""Provides the lora3d wizard: the Textual set-up and live dashboard (`make_app`) and its plain-terminal fallbacks.

`make_app` is imported lazily so `lora3d watch --plain` and the plain wizard never load Textual.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_app"]


def __getattr__(name: str) -> Any:
    if name == "make_app":
        from wizard.app import make_app  # lazy: `import wizard` stays light; Textual loads on first use

        return make_app
    raise AttributeError(f"module 'wizard' has no attribute {name!r}")
