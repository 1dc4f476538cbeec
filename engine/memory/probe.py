"""Provides the measured memory probe: a few real training steps per candidate, each in its own process.

Each candidate (rank, micro-batch, checkpointing, precision) runs in a fresh child process
(`python -m engine.train.memory_probe REQUEST.json`), so one candidate's peak never contaminates the next.
The child runs the candidate's profile through the Trainer, the loop `lora3d train` runs, for `steps` steps
of one micro-batch each, and reads the peak with the Trainer's hooks (see `engine.train.memory_probe` for
what is measured on CUDA and on the CPU). The child is a process, not an import: the memory layer sits below
the trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.families.base import Recipe
from engine.memory.estimate import estimate_recipe

PROBE_STEPS = 2
PROBE_CHILD = "engine.train.memory_probe"
"""The child's module (run with `python -m`)."""
PROBE_TIMEOUT_S = 600


@dataclass
class Candidate:
    """One setting the probe tries."""

    rank: int
    micro_batch: int
    gradient_checkpointing: bool
    precision: str

    def overrides(self) -> dict[str, Any]:
        return {"lora.r": self.rank, "train.batch_size": self.micro_batch,
                "train.gradient_checkpointing": self.gradient_checkpointing, "train.mixed_precision": self.precision}


@dataclass
class Measurement:
    """The probe's result for one candidate; `error` is set when the child failed (OOM included)."""

    candidate: Candidate
    device: str
    estimated_bytes: int
    measured_bytes: int | None = None
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    nvml_bytes: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Estimated over measured (1.0 = exact; above 1 the estimate is conservative)."""
        if not self.measured_bytes:
            return None
        return self.estimated_bytes / self.measured_bytes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def probe_profile(trial: Recipe, device: str, steps: int, run_dir: Path) -> dict[str, Any]:
    """The candidate's resolved profile, set up for the probe: `steps` steps of one micro-batch each (the peak
    does not depend on accumulation), on `device`, with no out-of-memory recovery (an OOM must fail the
    candidate, not halve it), no evaluation or checkpoint schedule, no previews (the step-0 round samples
    before the measured steps, and the heap it leaves resident hides the steps' peak on a CPU), into a
    temporary run directory."""
    data = trial.profile.to_yaml_dict()
    data["train"].update(max_steps=steps, grad_accum=1, oom_recovery=False, eval_every=None, checkpoint_every=None,
                         device=device)
    data.setdefault("previews", {})["enabled"] = False
    data["output"].update(dir=str(run_dir), tensorboard=False)
    return data


def probe_candidate(recipe: Recipe, candidate: Candidate, device: str, steps: int = PROBE_STEPS,
                    timeout_s: float = PROBE_TIMEOUT_S) -> Measurement:
    """Runs `steps` training steps of `recipe` at `candidate` in a child process and reads its peak."""
    trial = recipe.with_overrides(candidate.overrides())
    description = trial.family.describe_memory(trial)
    estimate = estimate_recipe(trial, device=device, description=description)
    result = Measurement(candidate, device, estimated_bytes=estimate.expected_bytes, tokens=estimate.tokens)
    with tempfile.TemporaryDirectory(prefix="lora3d-probe-") as tmp:
        request = Path(tmp) / "request.json"
        answer = Path(tmp) / "answer.json"
        data = probe_profile(trial, device, steps, Path(tmp) / "run")
        request.write_text(json.dumps({"profile": data, "device": device, "steps": steps, "answer": str(answer)}))
        env = dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        try:
            proc = subprocess.run([sys.executable, "-m", PROBE_CHILD, str(request)], capture_output=True,
                                  text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            result.error = f"timed out after {timeout_s:.0f} s"
            return result
        if not answer.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            oom = "out of memory" in (proc.stderr or "").lower() or proc.returncode in (-9, 137)
            result.error = "out of memory" if oom else f"probe failed (exit {proc.returncode}): {' | '.join(tail)}"
            return result
        got = json.loads(answer.read_text())
    for key in ("measured_bytes", "allocated_bytes", "reserved_bytes", "nvml_bytes", "tokens", "seconds", "error"):
        if got.get(key) is not None:
            setattr(result, key, got[key])
    result.extra = got.get("extra", {})
    if description.tokens_vary and result.tokens and result.tokens != estimate.tokens:
        # The data kept fewer tokens than the description assumed (e.g. voxelisation under the point budget):
        # compare the memory model at the tokens that ran.
        exact = replace(description, tokens_per_sample=max(1, round(result.tokens / candidate.micro_batch)))
        result.extra["nominal_estimated_bytes"] = result.estimated_bytes
        result.extra["nominal_tokens"] = estimate.tokens
        result.estimated_bytes = estimate_recipe(trial, device=device, description=exact).expected_bytes
    return result


def probe_recipe(recipe: Recipe, candidates: list[Candidate], device: str, steps: int = PROBE_STEPS) -> list[Measurement]:
    """Measures every candidate in turn (one child process each)."""
    return [probe_candidate(recipe, c, device, steps) for c in candidates]


def correction_factor(measurements: list[Measurement]) -> float | None:
    """Measured over estimated, the largest over the successful candidates (so corrected plans stay safe)."""
    ratios = [m.measured_bytes / m.estimated_bytes for m in measurements if m.measured_bytes and m.estimated_bytes]
    return round(max(ratios), 3) if ratios else None


# ---------------------------------------------------------------------------------- peak resident set (Linux)
def proc_status_bytes(field_name: str) -> int | None:
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (Linux: `5` to /proc/self/clear_refs) so earlier peaks do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
