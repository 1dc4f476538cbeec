"""Provides the Sonata family's LoRA presets as data: Pointcept's LoRA, wider targets, and linear probing.

| preset           | r | alpha | dropout | targets (every encoder stage) | trains besides          |
|------------------|---|-------|---------|-------------------------------|-------------------------|
| `pointcept-lora` | 8 | 16    | 0.1     | qkv                           | head (+ a new decoder)  |
| `attn`           | 8 | 16    | 0.1     | qkv, proj                     | head (+ a new decoder)  |
| `attn+mlp`       | 8 | 16    | 0.1     | qkv, proj, fc1, fc2           | head (+ a new decoder)  |
| `linear`         | - | -     | -       | none (no adapter)             | head (+ a new decoder)  |

The first three are `engine.models.sonata.SONATA_LORA_PRESETS` (also `inject_lora_to_sonata(preset=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engine.lora.presets import LoraPreset
from engine.models.sonata import SONATA_LORA_PRESETS


@dataclass(frozen=True)
class LinearProbePreset:
    """Linear probing (Pointcept's `*-lin` configs): no adapter, the frozen backbone feeds a trained head."""

    name: str = "linear"
    description: str = "linear probing: no adapter, only the head (and a new decoder) trains"
    architecture: ClassVar[str] = "PT-v3m2"

    def profile_values(self, context: Any = None) -> dict[str, Any]:
        return {"target_modules": []}


PRESETS: dict[str, LoraPreset] = {**SONATA_LORA_PRESETS, "linear": LinearProbePreset()}
"""The family's presets by name (`lora.preset`)."""
