"""Provides the hardware fingerprint written into a profile, and the check of a rerun against it."""

from __future__ import annotations

from engine.hardware import HardwareInfo
from engine.memory.tiers import GIB, recommend_tier, tier_for_memory
from engine.profile.schema import HardwareSection, Profile


def hardware_fingerprint(hardware: HardwareInfo) -> HardwareSection:
    """The `hardware` section describing this machine (smallest GPU, as every process must fit)."""
    if hardware.cpu_mode:
        return HardwareSection(cpu_mode=True, tier="cpu")
    smallest = min(hardware.gpus, key=lambda g: g.total_bytes)
    return HardwareSection(
        cpu_mode=False,
        gpu_name=smallest.name,
        gpu_count=len(hardware.gpus),
        gpu_total_gb=round(smallest.total_bytes / GIB, 1),
        tier=recommend_tier(hardware).tier,
    )


def check_hardware(profile: Profile, hardware: HardwareInfo) -> list[str]:
    """Warnings when this machine is smaller than the one the profile was planned for, with what to change."""
    planned = profile.hardware
    if planned is None or planned.cpu_mode:
        return []
    warnings = []
    if hardware.cpu_mode:
        warnings.append(
            f"this profile was planned for {planned.gpu_name} ({planned.gpu_total_gb} GB) but no GPU is visible: "
            "it will run on the CPU, slowly. Set `train.mixed_precision=no`; for a smoke test add "
            "`--set train.max_steps=2`."
        )
        return warnings
    here = min(hardware.gpus, key=lambda g: g.total_bytes)
    here_gb = here.total_bytes / GIB
    if planned.gpu_total_gb is not None and here_gb < planned.gpu_total_gb - 0.5:
        rec = tier_for_memory(here.total_bytes)
        fix = (
            f"--set train.batch_size={rec.batch_size} train.grad_accum="
            f"{max(1, profile.effective_batch // (rec.batch_size * profile.launch.num_processes))} "
            f"lora.r={rec.rank} train.gradient_checkpointing={str(rec.gradient_checkpointing).lower()}"
        )
        warnings.append(
            f"this profile was planned for {planned.gpu_total_gb} GB ({planned.gpu_name}, tier {planned.tier}) "
            f"but this GPU ({here.name}) has {here_gb:.1f} GB (tier {rec.tier}). To keep the effective batch "
            f"and fit, rerun with {fix}, or check with `lora3d plan`."
        )
    if planned.gpu_count and len(hardware.gpus) < profile.launch.num_processes and profile.launch.num_machines == 1:
        warnings.append(
            f"`launch.num_processes` is {profile.launch.num_processes} but only {len(hardware.gpus)} GPU(s) are visible. "
            f"Set `launch.num_processes={len(hardware.gpus)}` and raise `train.grad_accum` to keep the effective batch."
        )
    return warnings
