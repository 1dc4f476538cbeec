"""Provides the cache root: where lora3d keeps what it can rebuild (demo bases, synthetic data, latents).

`$LORA3D_CACHE`, or `~/.cache/lora3d`. Everything under it is safe to delete; it is rebuilt on next use.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$LORA3D_CACHE`, or `~/.cache/lora3d` (not created here)."""
    return Path(os.environ.get("LORA3D_CACHE") or Path.home() / ".cache" / "lora3d")
