"""Provides the message for an out-of-memory step that micro-batch 1 cannot fix: the levers, in order.

The levers, most effective first: gradient checkpointing, a lower LoRA rank, half precision, and fewer
tokens per sample (the family's `MemoryDescription.lever`: points per scene, instances per scene, ...).
Each lever that applies is listed with the planner's estimate after pulling it together with every lever
before it, so the user sees how far each step goes.
"""

from __future__ import annotations

from dataclasses import replace

from engine.families.base import Recipe
from engine.memory.estimate import correction_for, estimate_description

_GB = 1024**3


def levers_message(recipe: Recipe) -> str:
    """What to change when even micro-batch 1 runs out of memory, most effective lever first."""
    profile = recipe.profile
    train, lora = profile.train, profile.lora
    description = recipe.family.describe_memory(recipe)
    device = "cpu" if train.device == "cpu" else "cuda"
    correction = correction_for(profile, device)
    state = {"ckpt": train.gradient_checkpointing, "rank": lora.r, "precision": train.mixed_precision}

    def peak(tokens_scale: float = 1.0) -> str:
        desc = description
        if tokens_scale != 1.0:
            desc = replace(description, tokens_per_sample=max(1, int(description.tokens_per_sample * tokens_scale)))
        est = estimate_description(desc, 1, state["ckpt"], state["precision"], device=device,
                                   correction=correction, rank=state["rank"])
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
    lever = description.lever
    if lever is not None:
        levers.append(f"half the {lever.label}: {lever.set_item()}" + peak(0.5))
    numbered = "; ".join(f"{i}. {item}" for i, item in enumerate(levers, 1))
    current = now.replace(" (estimated peak", " an estimated").rstrip(")")
    return (
        f"out of memory: the model does not fit even at micro-batch 1. The current settings need{current}. "
        f"Try, in order: {numbered}. Check a setting with `lora3d plan PROFILE --set ...` before rerunning "
        "with --resume."
    )
