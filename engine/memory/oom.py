"""Provides what to say when memory runs out: the levers in order, and the refusal before a run that cannot fit.

The levers, most effective first: gradient checkpointing, a lower LoRA rank, half precision, and fewer
tokens per sample (the family's `MemoryDescription.lever`: points per scene, instances per scene, ...).
Each lever that applies is listed with the planner's estimate after pulling it together with every lever
before it, so the user sees how far each step goes.
"""

from __future__ import annotations

from dataclasses import replace

from engine.errors import HardwareError
from engine.families.base import Recipe
from engine.hardware import HardwareInfo
from engine.memory.estimate import correction_for, estimate_description
from engine.memory.plan import CPU_HOST_RESERVE_BYTES

_GB = 1024**3


def levers_message(recipe: Recipe, heading: str | None = None, device: str | None = None) -> str:
    """What to change when even micro-batch 1 runs out of memory, most effective lever first.

    Args:
        heading: the first sentence (default: the out-of-memory one the trainer raises at micro-batch 1).
        device: "cpu" or "cuda"; None reads `train.device`.
    """
    profile = recipe.profile
    train, lora = profile.train, profile.lora
    description = recipe.family.describe_memory(recipe)
    device = device or ("cpu" if train.device == "cpu" else "cuda")
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
    heading = heading or "out of memory: the model does not fit even at micro-batch 1."
    # Only gradient checkpointing leaves the samples and the maths as they are (a --resume accepts it).
    resumable = ("The first can be switched on for a --resume; the others change the run, so train them into a new "
                 "folder (--out)" if not train.gradient_checkpointing else
                 "These change the run, so train them into a new folder (--out)")
    return (
        f"{heading} The current settings need{current}. Try, in order: {numbered}. Check a setting with "
        f"`lora3d plan PROFILE --set ...`. {resumable}."
    )


def check_fits(recipe: Recipe, hardware: HardwareInfo) -> None:
    """Refuses, before anything is built, a run the planner says cannot fit on this machine even at the
    smallest micro-batch out-of-memory recovery can reach (1, or the profile's when recovery is off).

    The budget is the smallest visible GPU's memory, or on a CPU run the host RAM less what the system
    keeps. `--force` (the CLI) skips this check.

    Raises:
        HardwareError: the estimate exceeds the budget; the message gives both numbers and the levers.
    """
    profile = recipe.profile
    train = profile.train
    device = "cpu" if hardware.cpu_mode or train.device == "cpu" else "cuda"
    if device == "cuda":
        budget = min(g.total_bytes for g in hardware.gpus)
        where = f"the smallest GPU here ({min(hardware.gpus, key=lambda g: g.total_bytes).name}) has"
    else:
        budget = max(0, hardware.host_ram_bytes - CPU_HOST_RESERVE_BYTES)
        where = (f"this machine has for a CPU run ({hardware.host_ram_bytes / _GB:.1f} GB of RAM less "
                 f"{CPU_HOST_RESERVE_BYTES / _GB:.0f} GB for the system)")
    smallest = 1 if train.oom_recovery else train.batch_size
    description = recipe.family.describe_memory(recipe)
    estimate = estimate_description(description, smallest, train.gradient_checkpointing, train.mixed_precision,
                                    device=device, correction=correction_for(profile, device), rank=profile.lora.r)
    if estimate.estimate_bytes <= budget:
        return
    reach = "micro-batch 1, the smallest out-of-memory recovery reaches" if train.oom_recovery else (
        f"micro-batch {smallest} (`train.oom_recovery` is off)")
    heading = (f"{recipe.source}: this run cannot fit: the planner estimates {estimate.estimate_bytes / _GB:.2f} GB "
               f"at {reach}, more than {where}: {budget / _GB:.2f} GB. Nothing was built or written.")
    raise HardwareError(levers_message(recipe, heading, device) + " To try anyway, pass --force.")
