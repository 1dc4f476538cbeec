"""Provides the measured memory probe's child process: a candidate's first steps run by the Trainer, peak read by hooks.

`engine.memory.probe` starts `python -m engine.train.memory_probe REQUEST.json` once per candidate (a
fresh process, so no candidate inherits another's peak). The request holds the candidate's profile, set up
to run `steps` optimizer steps of one micro-batch each, without out-of-memory recovery (an OOM must fail the
candidate, not shrink it). The Trainer runs exactly as `lora3d train` runs it; two hooks measure:

- `before_micro_batch`, first call: the model, optimizer and first batch are in place; reset the peak
  (CUDA: the allocator's peak statistics; CPU: the kernel's resident-set high-water mark through
  `/proc/self/clear_refs`, else `ru_maxrss`) and note the resident set and the model's tensor bytes.
- `after_step`, step `steps`: read the peak, write the answer, stop the run.

What is reported: CUDA `max_memory_allocated` / `max_memory_reserved` and NVML's figure for this process
(allocator plus CUDA context); CPU the high-water mark minus the resident set at the reset plus the bytes
of the model's tensors (resident before the reset). Model building and the first batch's loading are left
out; later batches load inside the measured steps, as they do in training.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import Lora3dError
from engine.families.base import Recipe, StepOutput, Task
from engine.families.recipe import resolve_recipe
from engine.memory.estimate import CUDA_CONTEXT_BYTES
from engine.memory.probe import proc_status_bytes, reset_peak_rss
from engine.train.trainer import Trainer, TrainerHooks


class _Measured(Exception):
    """Raised by the last measured step's hook to end the run: what follows (evaluation, saving) is not probed."""


@dataclasses.dataclass
class _CountingTask:
    """The recipe's task, recording the tokens of every micro-batch (the estimate is compared at those tokens)."""

    inner: Task
    tokens: list[int] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def primary_metric(self) -> str:
        return self.inner.primary_metric

    @property
    def greater_is_better(self) -> bool:
        return self.inner.greater_is_better

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = self.inner.loss(model, batch)
        self.tokens.append(int(out.num_tokens))
        return out

    def evaluate(self, model: nn.Module, batches: Any) -> dict[str, float]:
        return self.inner.evaluate(model, batches)


def held_modules(model: nn.Module) -> list[nn.Module]:
    """The model and the modules it holds as plain attributes, one level deep (frozen encoders kept outside
    its state dict, so outside `parameters()`, still sit in memory beside it)."""
    found = [model]
    for value in vars(model).values():
        if isinstance(value, nn.Module):
            found.append(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            found.extend(v for v in vars(value).values() if isinstance(v, nn.Module))
    return found


def tensor_bytes(modules: list[nn.Module]) -> int:
    """Bytes of the modules' parameters and buffers, each storage counted once."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _nvml_process_bytes() -> int | None:
    try:
        import pynvml  # lazy: optional, and only on CUDA

        pynvml.nvmlInit()
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


class _Probe:
    """The two hooks and what they measured."""

    def __init__(self, steps: int, counter: _CountingTask) -> None:
        self.steps = steps
        self.counter = counter
        self.answer: dict[str, Any] = {}
        self.done = 0
        self._started: float | None = None

    def before_micro_batch(self, trainer: Trainer, indices: list[int]) -> None:
        if self._started is not None:
            return
        device = trainer.accelerator.device
        model = trainer.accelerator.unwrap_model(trainer.model)
        self._weights = tensor_bytes(held_modules(model))
        self._trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self._hwm_reset = reset_peak_rss()
            self._rss_before = proc_status_bytes("VmRSS") or 0
        self.counter.tokens.clear()
        self._started = time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        self.done += 1
        if self.done < self.steps:
            return
        device = trainer.accelerator.device
        answer: dict[str, Any] = {
            "seconds": time.perf_counter() - (self._started or time.perf_counter()),
            "tokens": max(self.counter.tokens, default=0),
            "extra": {"weights_bytes": self._weights, "trainable": self._trainable, "steps": self.done,
                      "micro_batch_tokens": list(self.counter.tokens)},
        }
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            answer["allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
            answer["reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
            answer["nvml_bytes"] = _nvml_process_bytes()
            answer["measured_bytes"] = answer["nvml_bytes"] or answer["reserved_bytes"] + CUDA_CONTEXT_BYTES
        else:
            peak = proc_status_bytes("VmHWM") if self._hwm_reset else None
            if peak is None:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            answer["extra"]["rss_increase_bytes"] = int(peak - self._rss_before)
            answer["measured_bytes"] = int(peak - self._rss_before + self._weights)
        self.answer = answer
        raise _Measured


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure message."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def run_probe(request: dict[str, Any]) -> dict[str, Any]:
    """Runs the request's profile through the Trainer for `steps` steps; returns the measurement (or `error`)."""
    recipe: Recipe = resolve_recipe(request["profile"], source="<probe>")
    counter = _CountingTask(recipe.task)
    recipe = dataclasses.replace(recipe, task=counter)
    probe = _Probe(int(request["steps"]), counter)
    hooks = TrainerHooks(before_micro_batch=probe.before_micro_batch, after_step=probe.after_step)
    trainer = Trainer(recipe, hooks=hooks, install_signal_handlers=False)
    try:
        trainer.run()
    except _Measured:
        return probe.answer
    except Lora3dError as exc:  # e.g. fewer training samples than the candidate's micro-batch
        return {"error": str(exc)}
    except Exception as exc:
        if is_out_of_memory(exc):
            return {"error": "out of memory"}
        raise
    return {"error": f"the run ended after {probe.done} steps, before the {probe.steps} the probe measures"}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    answer = run_probe(request)
    Path(request["answer"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
