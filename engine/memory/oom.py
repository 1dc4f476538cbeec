"""Provides the message for an out-of-memory step that micro-batch 1 cannot fix: the levers, in order.

The levers, most effective first: gradient checkpointing, a lower LoRA rank, half precision, and fewer
points (SceneSplat) or instances (MIDI) per sample. Each lever that applies is listed with the
planner's estimate after pulling it together with every lever before it, so the user sees how far
each step goes. The estimate is advice: when it cannot be computed the levers are listed without it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.profile.schema import Profile

_GB = 1024**3


def _per_sample_key(profile: Profile, tokens: int) -> tuple[str, str]:
    """The profile key that halves the tokens per sample, and its `--set` item."""
    if profile.model.family == "midi":
        k = getattr(profile.model, "num_instances_per_batch", 2)
        return "instances per scene", f"`model.num_instances_per_batch={max(1, k // 2)}`"
    if profile.model.family == "scenesplat":
        budget = getattr(profile.data, "point_budget", None) or tokens
        return "points per scene", f"`data.point_budget={max(64, budget // 2)}`"
    return "tokens per sample", "fewer points or instances per sample (see the family's data options)"


def levers_message(profile: Profile, family: Any) -> str:
    """What to change when even micro-batch 1 runs out of memory, most effective lever first."""
    train, lora = profile.train, profile.lora
    try:
        from engine.memory.estimate import correction_for, describe_profile, estimate_description

        description = describe_profile(profile, family)
        device = "cpu" if train.device == "cpu" else "cuda"
        correction = correction_for(profile, device)
    except Exception:  # the estimate is advice; the levers stand without it
        description = None

    state = {"ckpt": train.gradient_checkpointing, "rank": lora.r, "precision": train.mixed_precision}

    def peak(tokens_scale: float = 1.0) -> str:
        if description is None:
            return ""
        desc = description
        if tokens_scale != 1.0:
            desc = replace(description, tokens_per_sample=max(1, int(description.tokens_per_sample * tokens_scale)))
        try:
            est = estimate_description(desc, train.batch_size, state["ckpt"], state["precision"], device=device,
                                       correction=correction, rank=state["rank"])
        except Exception:
            return ""
        return f" (estimated peak {est.estimate_bytes / _GB:.2f} GB)"

    now = peak()
    levers = []
    if not state["ckpt"]:
        state["ckpt"] = True
        levers.append("`train.gradient_checkpointing=true`" + peak())
    if lora.r > 4:
        state["rank"] = max(4, lora.r // 2)
        levers.append(f"`lora.r={state['rank']}`" + peak())
    if train.mixed_precision == "no":
        state["precision"] = "bf16"
        levers.append("`train.mixed_precision=bf16`" + peak())
    per_sample = getattr(family, "per_sample_lever", None)
    if per_sample:
        levers.append(per_sample(profile))
    else:
        what, key = _per_sample_key(profile, description.tokens_per_sample if description else 0)
        levers.append(f"half the {what}: {key}" + peak(0.5))
    numbered = "; ".join(f"{i}. {lever}" for i, lever in enumerate(levers, 1))
    current = f" The current settings need{now.replace(' (estimated peak', ' an estimated').rstrip(')')}." if now else ""
    return (
        f"out of memory: the model does not fit even at micro-batch 1.{current} Try, in order: "
        f"{numbered}. Check a setting with `lora3d plan PROFILE --set ...` before rerunning with --resume."
    )
