"""Wizard fixtures: fake probes (no GPU, one 24 GB GPU, two GPUs) and a synthetic run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.hardware import GpuInfo, HardwareInfo
from engine.memory.tiers import GIB
from wizard.draft import REPO_ROOT  # noqa: F401  (re-exported for tests)


def fake_hardware(gpus: int = 1, total_gb: float = 24.0) -> HardwareInfo:
    """A deterministic probe result: `gpus` identical cards (0 = CPU mode)."""
    cards = [GpuInfo(index=i, name="NVIDIA GeForce RTX 4090", total_bytes=int(total_gb * GIB),
                     free_bytes=int((total_gb - 1.5) * GIB), driver="550.54.14", compute_capability="8.9")
             for i in range(gpus)]
    note = "" if gpus else "no GPU: CPU mode (smoke tests and the demo)"
    return HardwareInfo(cards, host_ram_bytes=64 * GIB, accelerators={"spconv": False, "flash_attn": False},
                        driver="550.54.14" if gpus else None, note=note, cpu_count=16)


@pytest.fixture
def gpu24() -> HardwareInfo:
    return fake_hardware(1, 24.0)


@pytest.fixture
def cpu_only() -> HardwareInfo:
    return fake_hardware(0)


MODULES = [
    {"module": f"backbone.enc.enc{s}.block{b}.attn.qkv", "kind": "lora", "adapter": "default",
     "shape": [96, 32], "rank": 8, "params": 1024, "bytes": 4096}
    for s in range(2) for b in range(2)
]


def synthetic_events(steps: int = 10, total: int = 20, t0: float = 1_000_000.0, dt: float = 2.0,
                     end: str | None = None, error: str | None = None) -> list[dict[str, Any]]:
    """A run's events: start, `steps` steps (loss 2.0 falling by 0.1), an eval at step 5, optional end."""
    events: list[dict[str, Any]] = [{
        "type": "start", "time": t0, "run_dir": "x", "name": "fake-run", "family": "scenesplat", "task": "semseg",
        "device": "cpu", "mixed_precision": "no", "num_processes": 1, "micro_batch": 2, "grad_accum": 1,
        "effective_batch": 2, "steps_per_epoch": 10, "total_steps": total, "train_samples": 20, "val_samples": 4,
        "resumed_from": None, "start_step": 0, "pid": os.getpid(),
        "params": {"total": 350000, "trainable": 4096, "lora": 4096, "ratio": 4096 / 350000, "modules": MODULES},
    }]
    for s in range(1, steps + 1):
        events.append({"type": "step", "time": t0 + s * dt, "step": s, "total_steps": total, "epoch": (s - 1) // 10,
                       "loss": round(2.0 - 0.1 * (s - 1), 4), "lr": 1e-3, "grad_norm": 1.0, "step_time": dt,
                       "samples_per_s": 1.0, "tokens_per_s": 5000.0, "memory_bytes": 512 * 1024**2,
                       "micro_batch": 2, "grad_accum": 1})
        if s == 5:
            events.append({"type": "eval", "time": t0 + s * dt, "step": 5, "metrics": {"miou": 0.25, "val_loss": 1.5},
                           "primary": "miou", "best": 0.25, "best_step": 5, "improved": True})
            events.append({"type": "warning", "time": t0 + s * dt, "step": 5, "message": "loss spike (test)"})
    if error:
        events.append({"type": "error", "time": t0 + steps * dt + 1, "message": error, "kind": "RuntimeError"})
    if end:
        events.append({"type": "end", "time": t0 + steps * dt + 2, "status": end, "step": steps,
                       "final_loss": 1.1, "best_metric": 0.25, "best_step": 5,
                       "adapter": "runs/fake/adapter" if end == "completed" else None})
    return events


def write_events(run_dir: Path, events: list[dict[str, Any]]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "events.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")
    return path
