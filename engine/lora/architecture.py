"""Provides the base-architecture fingerprint: the model's own parameter names and shapes, LoRA excluded."""

from __future__ import annotations

import hashlib

from torch import nn

from engine.lora.config import LORA_PARAM_PARTS
from engine.lora.prompt import PROMPT_ATTR


def base_parameter_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Return ``{original parameter name: shape}`` of the base model, with or without LoRA injected.

    PEFT's ``.base_layer`` is removed from names and LoRA/prompt parameters are skipped, so an injected
    model and its plain base give the same mapping.
    """
    shapes: dict[str, list[int]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        parts = name.split(".")
        if parts[0] == PROMPT_ATTR or LORA_PARAM_PARTS.intersection(parts):
            continue
        original = ".".join(p for p in parts if p != "base_layer")
        shapes[original] = list(param.shape)
    return shapes


def base_fingerprint(model: nn.Module) -> str:
    """Return a short hash of the base model's parameter names and shapes (16 hex digits)."""
    lines = "\n".join(f"{name}:{tuple(shape)}" for name, shape in sorted(base_parameter_shapes(model).items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def diff_parameter_shapes(saved: dict[str, list[int]], current: dict[str, list[int]], limit: int = 4) -> list[str]:
    """Describe how two name->shape maps differ: shape changes first, then missing and extra names.

    Each phrase names at most `limit` parameters and counts the rest.
    """

    def names(keys: list[str]) -> str:
        shown = ", ".join(f"`{k}`" for k in keys[:limit])
        return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

    changed = [
        f"`{n}` shape {tuple(current[n])} != saved {tuple(saved[n])}"
        for n in sorted(saved.keys() & current.keys())
        if list(saved[n]) != list(current[n])
    ]
    out = changed[:limit] + ([f"{len(changed) - limit} more shape changes"] if len(changed) > limit else [])
    missing = sorted(saved.keys() - current.keys())
    extra = sorted(current.keys() - saved.keys())
    if missing:
        out.append(f"{names(missing)} missing in the model")
    if extra:
        out.append(f"{names(extra)} not in the adapter's base")
    return out
