"""Provides the measured memory probe: a few real training steps per candidate, each in its own process.

Each candidate (rank, micro-batch, checkpointing, precision) runs in a fresh child process
(`python -m engine.memory.probe REQUEST.json`), so one candidate's peak never contaminates the next.
The child builds the family's model with LoRA, takes the first micro-batch of the real training data
and runs `steps` forward/backward/AdamW steps on it.

What is measured:
- CUDA: `torch.cuda.max_memory_allocated` and `max_memory_reserved`, and NVML's figure for the child
  process (allocator plus CUDA context), which is what the device must hold.
- CPU: the resident-set high-water mark of the steps (Linux `VmHWM`, reset just before the steps
  through `/proc/self/clear_refs`; `ru_maxrss` elsewhere) minus the RSS just before them, plus the
  bytes of the model's tensors (resident before the reset). Data loading and model building are left
  out, so their transient peaks do not count.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engine.families.base import Recipe
from engine.families.recipe import resolve_recipe
from engine.lora.inject import apply_lora_spec
from engine.memory.estimate import CUDA_CONTEXT_BYTES, estimate_recipe

PROBE_STEPS = 2
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
        data = trial.profile.to_yaml_dict()
        data["output"]["dir"] = str(Path(tmp) / "run")
        data["output"]["tensorboard"] = False
        request.write_text(json.dumps({"profile": data, "device": device, "steps": steps, "answer": str(answer)}))
        env = dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        try:
            proc = subprocess.run([sys.executable, "-m", "engine.memory.probe", str(request)], capture_output=True,
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


# ---------------------------------------------------------------------------------- the child process
def _tensor_bytes(modules: list[Any]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


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


def _nvml_process_bytes() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        import torch

        index = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            first = visible.split(",")[index].strip()
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(first))
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory:
                return int(proc.usedGpuMemory)
    except Exception:  # NVML is optional: the allocator's numbers stand without it
        return None
    return None


def run_child(request: dict[str, Any]) -> dict[str, Any]:
    """The child's work: build, take one micro-batch, run the steps, report the peak."""
    recipe = resolve_recipe(request["profile"], source="<probe>")
    profile, family = recipe.profile, recipe.family
    device = torch.device("cuda" if request["device"] == "cuda" else "cpu")
    torch.manual_seed(profile.train.seed)
    model = apply_lora_spec(family.build_model(recipe), recipe.lora)
    if profile.train.gradient_checkpointing:
        family.set_gradient_checkpointing(model, True)
    train_ds, _ = family.build_datasets(recipe)
    micro = profile.train.batch_size
    batch = family.collate([train_ds[i % len(train_ds)] for i in range(micro)])
    from accelerate.utils import send_to_device

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device)
    frozen = getattr(model, "midi_frozen", None)
    if frozen is not None and hasattr(frozen, "to"):
        frozen.to(device)
    batch = send_to_device(batch, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=profile.train.lr)
    precision = profile.train.mixed_precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    weights = _tensor_bytes([model] + [getattr(frozen, n, None) for n in ("vae", "clip", "dino")])
    gc.collect()
    hwm_reset = device.type == "cpu" and reset_peak_rss()
    rss_before = proc_status_bytes("VmRSS") or 0
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(int(request["steps"])):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = recipe.task.loss(model, batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = out.num_tokens
    answer: dict[str, Any] = {"seconds": time.perf_counter() - t0, "tokens": tokens,
                              "extra": {"weights_bytes": weights, "trainable": sum(p.numel() for p in params)}}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        answer["allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        answer["reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        answer["nvml_bytes"] = _nvml_process_bytes()
        answer["measured_bytes"] = answer["nvml_bytes"] or answer["reserved_bytes"] + CUDA_CONTEXT_BYTES
    else:
        peak = proc_status_bytes("VmHWM") if hwm_reset else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        answer["extra"]["rss_increase_bytes"] = int(peak - rss_before)
        answer["measured_bytes"] = int(peak - rss_before + weights)
    return answer


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    answer = run_child(request)
    Path(request["answer"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
