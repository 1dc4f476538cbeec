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

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.memory.estimate import GIB, Estimate, correction_for, describe_profile, estimate_description
from engine.memory.gpus import GpuInfo, HardwareInfo
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
    from engine.memory.gpus import probe_hardware

    return probe_hardware()


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_profile(profile: Any, hardware: HardwareInfo | None = None, family: Any = None) -> Plan:
    """Estimate, verdict and joint recommendation for `profile` on `hardware` (probed when None)."""
    hardware = hardware if hardware is not None else hardware_for_plan()
    device = "cpu" if hardware.cpu_mode or profile.train.device == "cpu" else "cuda"
    tier = recommend_tier(hardware) if device == "cuda" else recommend_tier(fake_hardware(0))
    if device == "cuda":
        device_bytes: int | None = min(g.total_bytes for g in hardware.gpus)
        budget = int(device_bytes)
    else:
        device_bytes = None
        budget = max(0, hardware.host_ram_bytes - CPU_HOST_RESERVE_BYTES)
    description = describe_profile(profile, family)
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
    recommendation = _recommend(per_process, processes, tier, budget, device, estimate)
    warnings = [tier.warning] if tier.warning else []
    return Plan(current, device, device_bytes, hardware.host_ram_bytes, budget, current.estimate_bytes <= budget,
                recommendation, tier, warnings)


def _recommend(per_process: int, processes: int, tier: TierRecommendation, budget: int, device: str,
               estimate: Any) -> Recommendation:
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
        reasons.append(f"does not fit even so ({where()}): lower the points or instances per sample "
                       "(`data.point_budget` for SceneSplat, `model.num_instances_per_batch` or `model.num_tokens` "
                       "for MIDI), or use a larger GPU")
    return Recommendation(rank, micro, per_process // micro, ckpt, precision, peak(), fits, tier.tier, reasons)


# ---------------------------------------------------------------------------------- lora3d plan
def _fmt(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f} GB"


def _candidates(profile: Any, plan: Plan) -> list[Any]:
    from engine.memory.probe import Candidate

    rec = plan.recommendation
    top = Candidate(rec.rank, rec.micro_batch, rec.gradient_checkpointing, rec.precision)
    own = Candidate(profile.lora.r, profile.train.batch_size, profile.train.gradient_checkpointing,
                    profile.train.mixed_precision)
    return [top] if own == top else [top, own]


def write_measured(path: Path, measured: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Writes `hardware.measured` (and the fingerprint) into the profile file atomically; comments are lost."""
    import yaml

    from engine.profile.load import read_yaml

    data = read_yaml(path)
    hardware = dict(data.get("hardware") or fingerprint)
    hardware["measured"] = measured
    data["hardware"] = hardware
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_plan(args: argparse.Namespace) -> int:
    """`lora3d plan PROFILE [--json] [--measure [--write]]`."""
    from engine.families.registry import get_family
    from engine.memory.hostram import check_host_ram
    from engine.profile import load_profile

    profile = load_profile(args.profile, args.set)
    hardware = hardware_for_plan()
    family = get_family(profile.model.family)
    plan = plan_profile(profile, hardware, family)
    plan.warnings.extend(check_host_ram(profile, family, hardware))
    measurements = []
    measured_record = None
    if getattr(args, "measure", False):
        from engine.memory.probe import correction_factor, probe_profile

        measurements = probe_profile(profile, _candidates(profile, plan), plan.device)
        factor = correction_factor(measurements)
        if factor is not None:
            import datetime

            measured_record = {
                "family": profile.model.family,
                "device": plan.device,
                "device_name": None if hardware.cpu_mode else min(hardware.gpus, key=lambda g: g.total_bytes).name,
                "correction": factor,
                "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "candidates": [m.to_dict() for m in measurements],
            }
            if getattr(args, "write", False):
                from engine.profile.fingerprint import hardware_fingerprint

                fingerprint = hardware_fingerprint(hardware).model_dump(mode="json")
                write_measured(Path(args.profile), measured_record, fingerprint)
    if args.json:
        out = plan.to_dict()
        if getattr(args, "measure", False):
            out["measured"] = [m.to_dict() for m in measurements]
            out["correction_factor"] = measured_record["correction"] if measured_record else None
            out["written"] = bool(measured_record and getattr(args, "write", False))
        print(json.dumps(out, indent=2))
        return 0
    _print_plan(profile, plan, measurements, measured_record, getattr(args, "write", False))
    return 0


def _print_plan(profile: Any, plan: Plan, measurements: list[Any], measured: dict[str, Any] | None,
                written: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    est = plan.estimate
    table = Table(title=f"memory estimate: {profile.model.family}, {est.tokens} tokens per micro-batch ({plan.device})")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    for key, value in est.breakdown.items():
        table.add_row(key, _fmt(value))
    table.add_row("expected peak", _fmt(est.expected_bytes))
    table.add_row("[bold]with 10% margin[/]", f"[bold]{_fmt(est.estimate_bytes)}[/]")
    console.print(table)
    for note in est.notes:
        console.print(f"  note: {escape(note)}")
    where = f"GPU {_fmt(plan.device_bytes)}" if plan.device_bytes else f"CPU, host RAM budget {_fmt(plan.budget_bytes)}"
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    console.print(f"verdict: {verdict} ({_fmt(est.estimate_bytes)} on {where})")
    rec = plan.recommendation
    console.print(
        f"recommendation ({rec.tier}): rank {rec.rank}, micro-batch {rec.micro_batch} x grad_accum {rec.grad_accum} "
        f"x {profile.launch.num_processes} process(es) = effective batch {profile.effective_batch}, gradient "
        f"checkpointing {'on' if rec.gradient_checkpointing else 'off'}, precision {rec.precision}: "
        f"{_fmt(rec.estimate_bytes)}{'' if rec.fits else ' [red](does not fit)[/]'}"
    )
    for reason in rec.reasons:
        console.print(f"  - {escape(reason)}")
    console.print(f"  apply with: --set {' '.join(rec.overrides())}")
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if measurements:
        mt = Table(title="measured vs estimated (expected peak, no margin)")
        for col in ("rank", "micro-batch", "ckpt", "precision", "estimated", "measured", "ratio est/meas"):
            mt.add_column(col)
        for m in measurements:
            c = m.candidate
            mt.add_row(str(c.rank), str(c.micro_batch), "on" if c.gradient_checkpointing else "off", c.precision,
                       _fmt(m.estimated_bytes), _fmt(m.measured_bytes) if m.measured_bytes else escape(m.error or "n/a"),
                       f"{m.ratio:.2f}" if m.ratio else "-")
        console.print(mt)
        if measured:
            console.print(f"correction factor (measured / estimated, worst case): {measured['correction']:.3f}"
                          + (" written to `hardware.measured`" if written else "; add --write to store it"))
