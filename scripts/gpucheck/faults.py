"""Provides the faults the training section injects around an in-process `lora3d train`: a memory cap, a Ctrl-C.

- `memory_cap`: on CUDA, `torch.cuda.set_per_process_memory_fraction` caps the caching allocator, so a
  micro-batch too large for the cap raises a real CUDA out-of-memory error. On a CPU (dry run) there is no
  allocator cap, so `ActivationMeter` stands in: global module hooks add up the bytes of every module's
  output during one forward with autograd on, and raise `torch.OutOfMemoryError` past the cap. The
  trainer cannot tell the two apart; both go through its OOM recovery.
- `interrupt_after`: a global optimizer step hook sends this process SIGINT after the N-th optimizer
  step, as a user's Ctrl-C at that moment would (the trainer saves a checkpoint and stops).
"""

from __future__ import annotations

import contextlib
import gc
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook


def _nbytes(obj: Any, seen: set[int]) -> int:
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen) for k, v in obj.items() if not str(k).startswith("_"))
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v, seen) for v in obj)
    return 0


class ActivationMeter:
    """Bytes of module outputs per training forward (autograd on); raises OOM above `cap_bytes` when set."""

    def __init__(self, cap_bytes: int | None = None) -> None:
        self.cap_bytes = cap_bytes
        self.peak = 0
        self._depth = 0
        self._current = 0
        self._handles: list[Any] = []

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        if not torch.is_grad_enabled():
            return
        if self._depth == 0:
            self._current = 0  # a new top-level forward
        self._depth += 1

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        self._depth = max(0, self._depth - 1)
        self._current += _nbytes(output, set())
        self.peak = max(self.peak, self._current)
        if self.cap_bytes is not None and self._current > self.cap_bytes:
            self._depth = 0
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (emulated on the CPU by scripts/gpucheck: {self._current} activation bytes "
                f"over the cap of {self.cap_bytes})")

    def __enter__(self) -> ActivationMeter:
        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def reset_cuda() -> int:
    """Frees what earlier runs in this process left cached; returns the bytes still reserved."""
    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_reserved())


@contextlib.contextmanager
def memory_cap(device: str, cap_bytes: int) -> Iterator[dict[str, Any]]:
    """Caps this process's memory at `cap_bytes` above what is reserved now (CUDA) or emulates it (CPU)."""
    info: dict[str, Any] = {"cap_bytes": cap_bytes}
    if device == "cuda":
        base = reset_cuda()
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, (base + cap_bytes) / total)
        info.update(kind="torch.cuda.set_per_process_memory_fraction", fraction=fraction, reserved_before=base)
        torch.cuda.set_per_process_memory_fraction(fraction)
        try:
            yield info
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            reset_cuda()
        return
    info["kind"] = "emulated: activation bytes per forward (CPU has no allocator cap)"
    with ActivationMeter(cap_bytes) as meter:
        yield info
    info["peak_activation_bytes"] = meter.peak


@contextlib.contextmanager
def measure_peak(device: str) -> Iterator[dict[str, Any]]:
    """The peak a run needs above the start: CUDA reserved bytes, or the CPU stand-in's activation bytes."""
    info: dict[str, Any] = {}
    if device == "cuda":
        base = reset_cuda()
        yield info
        torch.cuda.synchronize()
        info.update(kind="cuda max_memory_reserved", peak_bytes=int(torch.cuda.max_memory_reserved()) - base,
                    allocated_bytes=int(torch.cuda.max_memory_allocated()))
        return
    with ActivationMeter() as meter:
        yield info
    info.update(kind="activation bytes per forward (CPU stand-in)", peak_bytes=meter.peak)


@contextlib.contextmanager
def interrupt_after(steps: int) -> Iterator[None]:
    """Sends SIGINT to this process right after the `steps`-th optimizer step (a Ctrl-C at that moment)."""
    count = 0

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        nonlocal count
        count += 1
        if count == steps:
            signal.raise_signal(signal.SIGINT)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()
