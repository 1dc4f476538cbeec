"""Provides the inference memory budget: how many tokens one forward pass may take on this machine.

A family estimates one forward pass without gradients (`Family.inference_memory(recipe, tokens,
scene_tokens)`: parts in bytes, `expected` for the device, `scene` for the host buffers of a whole
scene). `inference_budget` finds the largest tokens per forward whose estimate, with the planner's 10%
margin, fits the budget: the GPU's memory on CUDA; on a CPU, the host RAM less a reserve, shared with the
scene's own buffers. `lora3d plan --inference` reports it, and the families' `predict`/`eval` cut a
larger scene into chunks of that size, so they run within the reported memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import ProfileError
from engine.families.base import Recipe
from engine.hardware import HardwareInfo, probe_hardware

GIB = 1024**3
MARGIN = 1.10
"""The planner's safety margin over the expected peak."""
HOST_RESERVE_BYTES = 2 * GIB
"""Host RAM left to the OS and the interpreter on a CPU (as the training plan leaves)."""
MIN_TOKENS = 64
MAX_TOKENS = 1 << 24


@dataclass
class InferenceBudget:
    """The largest forward pass that fits, and its estimate.

    Attributes:
        device: `cuda` or `cpu`.
        budget_bytes: what the forward (and on a CPU the scene's buffers) may use.
        max_tokens: tokens (points) per forward pass that fit; `scene_tokens` when the whole scene fits.
        expected_bytes: the estimate at `max_tokens`: the forward's peak, plus the scene's host buffers on
            a CPU; `estimate_bytes` adds the margin.
        parts: the family's breakdown at `max_tokens` (bytes).
        scene_tokens: the scene size the budget was computed for, or None.
        fits: False when not even `MIN_TOKENS` per forward fit.
    """

    device: str
    budget_bytes: int
    max_tokens: int
    expected_bytes: int
    parts: dict[str, int]
    scene_tokens: int | None = None
    fits: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def estimate_bytes(self) -> int:
        return int(self.expected_bytes * MARGIN)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "estimate_bytes": self.estimate_bytes}


def device_budget(device: str, hardware: HardwareInfo | None = None) -> int:
    """Bytes a forward pass may use: the smallest visible GPU's memory, or host RAM less `HOST_RESERVE_BYTES`."""
    hardware = hardware if hardware is not None else probe_hardware()
    if device == "cuda" and hardware.gpus:
        return min(g.total_bytes for g in hardware.gpus)
    return max(0, hardware.host_ram_bytes - HOST_RESERVE_BYTES)


def _needed(recipe: Recipe, tokens: int, scene_tokens: int | None, device: str) -> tuple[int, dict[str, int]]:
    try:
        parts = recipe.family.inference_memory(recipe, tokens, scene_tokens, device)
    except NotImplementedError:
        raise ProfileError(
            f"{recipe.source}: the {recipe.family.name} family gives no inference memory estimate, got "
            "`inference_memory` unimplemented. Plan its training instead (`lora3d plan PROFILE`)."
        ) from None
    host = parts.get("scene", 0) if device == "cpu" else 0
    return int(parts["expected"]) + int(host), dict(parts)


def inference_budget(recipe: Recipe, device: str, budget_bytes: int | None = None, scene_tokens: int | None = None,
                     hardware: HardwareInfo | None = None) -> InferenceBudget:
    """The most tokens per forward pass whose estimate (with the margin) fits `budget_bytes`.

    Args:
        recipe: the resolved profile.
        device: `cuda` or `cpu`.
        budget_bytes: the memory to fit; None: `device_budget(device)`.
        scene_tokens: the scene's size (caps the answer; its host buffers count on a CPU).
    """
    budget = budget_bytes if budget_bytes is not None else device_budget(device, hardware)
    high = min(scene_tokens, MAX_TOKENS) if scene_tokens else MAX_TOKENS
    low = min(MIN_TOKENS, high)

    def fits(tokens: int) -> bool:
        return _needed(recipe, tokens, scene_tokens, device)[0] * MARGIN <= budget

    notes = []
    if not fits(low):
        best, ok = low, False
        notes.append(f"even {low} tokens per forward pass exceed the budget of {budget / GIB:.2f} GB")
    elif fits(high):
        best, ok = high, True
    else:
        while high - low > max(1, low // 64):  # to within 1.6%: the estimate is not that exact anyway
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        best, ok = low, True
    needed, parts = _needed(recipe, best, scene_tokens, device)
    return InferenceBudget(device, int(budget), int(best), int(needed), parts, scene_tokens, ok, notes)


__all__ = ["MARGIN", "InferenceBudget", "device_budget", "inference_budget"]
