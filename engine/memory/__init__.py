"""Provides the memory planner: tiers, analytic estimate, measured probe, plan and host-RAM check.

Names are imported lazily so that `engine.hardware` (the wizard's first screen) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
        "TierRecommendation": "engine.memory.tiers",
    "recommend_tier": "engine.memory.tiers",
    "tier_for_memory": "engine.memory.tiers",
    "Estimate": "engine.memory.estimate",
    "estimate_recipe": "engine.memory.estimate",
    "estimate_description": "engine.memory.estimate",
    "Plan": "engine.memory.plan",
    "Recommendation": "engine.memory.plan",
    "plan_recipe": "engine.memory.plan",
    "fake_hardware": "engine.memory.plan",
    "Candidate": "engine.memory.probe",
    "Measurement": "engine.memory.probe",
    "probe_recipe": "engine.memory.probe",
    "HostRamEstimate": "engine.memory.hostram",
    "estimate_host_ram": "engine.memory.hostram",
    "check_host_ram": "engine.memory.hostram",
    "levers_message": "engine.memory.oom",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'engine.memory' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
