"""Provides the message for an out-of-memory step that micro-batch 1 cannot fix: the levers, in order."""

from __future__ import annotations

from typing import Any

from engine.profile.schema import Profile


def _estimate_with(profile: Profile, family: Any, **changes: Any) -> str:
    """The planner's peak estimate for the profile with `changes` applied, or '' when unavailable."""
    try:
        from engine.memory.estimate import estimate_profile
    except ImportError:
        return ""
    trial = profile.model_copy(deep=True)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(trial, section), key, value)
    try:
        est = estimate_profile(trial, family)
    except Exception:  # the estimate is advice; the levers stand without it
        return ""
    return f" (estimated peak {est.estimate_bytes / 1024**3:.2f} GB)"


def levers_message(profile: Profile, family: Any) -> str:
    """What to change when even micro-batch 1 runs out of memory, most effective lever first."""
    train, lora = profile.train, profile.lora
    levers = []
    if not train.gradient_checkpointing:
        levers.append("`train.gradient_checkpointing=true`" + _estimate_with(profile, family, train__gradient_checkpointing=True))
    if lora.r > 4:
        levers.append(f"`lora.r={max(4, lora.r // 2)}`" + _estimate_with(profile, family, lora__r=max(4, lora.r // 2)))
    if train.mixed_precision == "no":
        levers.append("`train.mixed_precision=bf16`" + _estimate_with(profile, family, train__mixed_precision="bf16"))
    per_sample = getattr(family, "per_sample_lever", None)
    if per_sample:
        levers.append(per_sample(profile))
    else:
        levers.append("fewer points or instances per sample (see the family's data options)")
    numbered = "; ".join(f"{i}. {lever}" for i, lever in enumerate(levers, 1))
    return (
        "out of memory: the model does not fit even at micro-batch 1. Try, in order: "
        f"{numbered}. Check a setting with `lora3d plan PROFILE --set ...` before rerunning with --resume."
    )
