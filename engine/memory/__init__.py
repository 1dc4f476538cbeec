"""Provides the memory planner: tiers, analytic estimate, measured probe, plan and host-RAM check.

Names are imported lazily so that `engine.hardware` (the wizard's first screen) stays light.
"""

from __future__ import annotations

from engine.lazy_exports import lazy_exports

_EXPORTS = {
    "TierRecommendation": "tiers",
    "recommend_tier": "tiers",
    "tier_for_memory": "tiers",
    "Estimate": "estimate",
    "estimate_recipe": "estimate",
    "estimate_description": "estimate",
    "Plan": "plan",
    "Recommendation": "plan",
    "plan_recipe": "plan",
    "fake_hardware": "plan",
    "Candidate": "probe",
    "Measurement": "probe",
    "probe_recipe": "probe",
    "HostRamEstimate": "hostram",
    "estimate_host_ram": "hostram",
    "check_host_ram": "hostram",
    "levers_message": "oom",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
