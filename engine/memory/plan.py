"""Provides the memory plan of a profile: estimate, verdict, joint recommendation, and `lora3d plan`.

`plan_profile` is what the wizard's Plan screen calls: it builds no model (the families count their
parameters from configs and file headers), so it returns in well under half a second. The joint
recommendation starts from the documented tier of the smallest visible GPU (or CPU mode) and pulls
the levers in a fixed order until the estimate, with its safety margin, fits the device:

1. gradient checkpointing on (activations drop to one layer plus each layer's input);
2. halve the micro-batch, doubling gradient accumulation (the effective batch never changes);
3. halve the LoRA rank, down to 4;
4. half precision (bf16, or fp16 on GPUs before Ampere) when the tier did not already choose it.

Every choice carries its reason and estimate. When even the last step does not fit, the plan says so
(`fits` false) and names the family's per-sample lever (points per scene, instances per scene).

Test seam: the environment variable `LORA3D_FAKE_GPU_GB` (e.g. `12`) makes `lora3d plan` plan for one
fake GPU of that size instead of probing NVML; `0` fakes a machine with no GPU.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.families.base import Lever, Recipe
from engine.families.inference_budget import InferenceBudget, inference_budget
from engine.hardware import GpuInfo, HardwareInfo, probe_hardware
from engine.memory.estimate import GIB, Estimate, correction_for, estimate_description
from engine.memory.tiers import TierRecommendation, recommend_tier

MIN_RANK = 4
CPU_HOST_RESERVE_BYTES = 2 * GIB
"""Host RAM a CPU run leaves to the OS and the interpreter when the plan budgets for training."""
FAKE_GPU_ENV = "LORA3D_FAKE_GPU_GB"


@dataclass
class Recommendation:
    """The joint recommendation; micro_batch x grad_accum x processes equals the requested effective batch."""

    rank: int
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    precision: str
    estimate_bytes: int
    fits: bool
    tier: str
    reasons: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """The `--set` items that apply this recommendation to a profile."""
        return [f"lora.r={self.rank}", f"train.batch_size={self.micro_batch}", f"train.grad_accum={self.grad_accum}",
                f"train.gradient_checkpointing={str(self.gradient_checkpointing).lower()}",
                f"train.mixed_precision={self.precision}"]


@dataclass
class Plan:
    """The profile's estimate on this machine, the verdict and the recommendation."""

    estimate: Estimate
    device: str
    device_bytes: int | None
    """Total memory of the smallest visible GPU; None on a CPU (then `budget_bytes` is host RAM based)."""
    host_ram_bytes: int
    budget_bytes: int
    fits: bool
    recommendation: Recommendation
    tier: TierRecommendation
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate_bytes": self.estimate.estimate_bytes,
            "expected_bytes": self.estimate.expected_bytes,
            "breakdown": dict(self.estimate.breakdown),
            "tokens": self.estimate.tokens,
            "correction": self.estimate.correction,
            "device": self.device,
            "device_bytes": self.device_bytes,
            "host_ram_bytes": self.host_ram_bytes,
            "budget_bytes": self.budget_bytes,
            "fits": self.fits,
            "tier": self.tier.tier,
            "recommendation": asdict(self.recommendation),
            "notes": list(self.estimate.notes),
            "warnings": list(self.warnings),
        }


def fake_hardware(gpu_gb: float, host_ram_gb: float = 64.0, count: int = 1) -> HardwareInfo:
    """A machine with `count` GPUs of `gpu_gb` GiB (0 = no GPU), for tests and `LORA3D_FAKE_GPU_GB`."""
    total = int(gpu_gb * GIB)
    gpus = [GpuInfo(index=i, name=f"fake {gpu_gb:g} GB GPU", total_bytes=total, free_bytes=total,
                    compute_capability="8.0") for i in range(count if gpu_gb > 0 else 0)]
    return HardwareInfo(gpus, int(host_ram_gb * GIB), {"spconv": False, "flash_attn": False},
                        note="" if gpus else "no GPU: faked CPU mode")


def hardware_for_plan() -> HardwareInfo:
    """This machine, or the fake one `LORA3D_FAKE_GPU_GB` asks for."""
    fake = os.environ.get(FAKE_GPU_ENV)
    if fake:
        try:
            return fake_hardware(float(fake))
        except ValueError:
            pass
    return probe_hardware()


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_recipe(recipe: Recipe, hardware: HardwareInfo | None = None) -> Plan:
    """Estimate, verdict and joint recommendation for `recipe` on `hardware` (probed when None)."""
    profile = recipe.profile
    hardware = hardware if hardware is not None else hardware_for_plan()
    device = "cpu" if hardware.cpu_mode or profile.train.device == "cpu" else "cuda"
    tier = recommend_tier(hardware) if device == "cuda" else recommend_tier(fake_hardware(0))
    if device == "cuda":
        device_bytes: int | None = min(g.total_bytes for g in hardware.gpus)
        budget = int(device_bytes)
    else:
        device_bytes = None
        budget = max(0, hardware.host_ram_bytes - CPU_HOST_RESERVE_BYTES)
    description = recipe.family.describe_memory(recipe)
    correction = correction_for(profile, device)

    def estimate(rank: int, micro: int, ckpt: bool, precision: str) -> Estimate:
        return estimate_description(description, micro, ckpt, precision, device=device, correction=correction,
                                    rank=rank)

    train = profile.train
    current = estimate(description.rank, train.batch_size, train.gradient_checkpointing, train.mixed_precision)
    if correction != 1.0:
        current.notes.append(f"corrected by the measured factor {correction:.2f} from `hardware.measured`")
    processes = profile.launch.num_processes
    per_process = profile.effective_batch // processes
    recommendation = _recommend(per_process, processes, tier, budget, device, estimate, description.lever)
    warnings = [tier.warning] if tier.warning else []
    return Plan(current, device, device_bytes, hardware.host_ram_bytes, budget, current.estimate_bytes <= budget,
                recommendation, tier, warnings)


def plan_inference(recipe: Recipe, hardware: HardwareInfo | None = None, scene_points: int | None = None,
                   budget_bytes: int | None = None) -> InferenceBudget:
    """The planner's inference mode: the most points one forward pass without gradients may take here.

    The device is chosen as for training (`train.device`, else a GPU when there is one); the budget is the
    smallest GPU's memory, or host RAM less the reserve on a CPU, unless `budget_bytes` is given. With
    `scene_points`, the scene's host buffers count on a CPU and a scene that fits whole is run whole;
    `predict` and `eval` cut a larger scene into chunks of `max_tokens`.
    """
    hardware = hardware if hardware is not None else hardware_for_plan()
    device = "cpu" if hardware.cpu_mode or recipe.profile.train.device == "cpu" else "cuda"
    return inference_budget(recipe, device, budget_bytes, scene_points, hardware)


def _recommend(per_process: int, processes: int, tier: TierRecommendation, budget: int, device: str,
               estimate: Any, lever: Lever | None) -> Recommendation:
    gb = GIB
    rank = tier.rank
    micro_choices = [d for d in _divisors_desc(per_process) if d <= max(1, tier.batch_size)]
    micro = micro_choices[0]
    ckpt = tier.gradient_checkpointing
    precision = tier.precision if device == "cuda" else "no"
    reasons = [f"start from the {tier.tier} tier: {tier.reason}"]
    if micro != tier.batch_size:
        reasons.append(f"micro-batch {micro}: the largest divisor of the per-process batch {per_process} "
                       f"not above the tier's {tier.batch_size}")

    def peak() -> int:
        return estimate(rank, micro, ckpt, precision).estimate_bytes

    def where() -> str:
        return f"{peak() / gb:.2f} GB of {budget / gb:.2f} GB"

    if peak() <= budget:
        reasons.append(f"fits as is: {where()}")
    if peak() > budget and not ckpt:
        ckpt = True
        reasons.append(f"gradient checkpointing on: activations shrink to one layer's worth ({where()})")
    while peak() > budget and micro > 1:
        micro = next(d for d in micro_choices if d < micro) if any(d < micro for d in micro_choices) else 1
        reasons.append(f"micro-batch {micro}, gradient accumulation {per_process // micro}: "
                       f"the effective batch stays {per_process * processes} ({where()})")
    while peak() > budget and rank > MIN_RANK:
        rank = max(MIN_RANK, rank // 2)
        reasons.append(f"LoRA rank {rank}: fewer adapter weights, gradients and AdamW states ({where()})")
    if peak() > budget and device == "cuda" and precision == "no":
        precision = "bf16"
        reasons.append(f"bf16 mixed precision: half-size activations ({where()})")
    fits = peak() <= budget
    if not fits:
        fewer = (f"lower the {lever.label} (`{lever.key}`; `--set {lever.key}={lever.value}` halves it)" if lever
                 else "use smaller samples")
        reasons.append(f"does not fit even so ({where()}): {fewer}, or use a larger GPU")
    return Recommendation(rank, micro, per_process // micro, ckpt, precision, peak(), fits, tier.tier, reasons)
