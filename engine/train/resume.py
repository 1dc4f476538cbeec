"""Provides resume: continue a run from its newest complete checkpoint, or refuse with every difference.

A checkpoint restores the trainable weights, the optimizer and scheduler, every RNG and the data position
(`TrainState`), so a resumed run ends with the same weights as an uninterrupted one. It is refused when the
checkpoint's identity (`engine.train.identity`) differs from this run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.train.checkpoint import LoadedCheckpoint, list_checkpoints, load_checkpoint, restore_rng
from engine.train.identity import identity_differences
from engine.train.state import TrainState


@dataclass
class Resumed:
    """Where a resume continues: the checkpoint's folder and its state with this run's split."""

    path: Path
    state: TrainState


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None


def check_identity(ckpt: LoadedCheckpoint, identity: dict[str, Any]) -> None:
    """Raises CheckpointError listing every identity key that differs, with both values."""
    diffs = identity_differences(ckpt.identity, identity)
    if diffs:
        raise CheckpointError(
            f"{ckpt.path}: this checkpoint was made by a different setup and cannot be resumed here:\n  "
            + "\n  ".join(diffs)
            + "\nResume with the profile the run used (its profile.resolved.yaml), or start a new run with --out."
        )


def restore_training(ckpt: LoadedCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> None:
    """Copies the checkpoint's trainable weights, optimizer, scheduler and RNG states into this run."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in ckpt.trainable]
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: checkpoint lacks trainable tensors {missing[:3]}. Delete it to resume from the one before."
        )
    with torch.no_grad():
        for name, tensor in ckpt.trainable.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(ckpt.optimizer_state)
    scheduler.load_state_dict(ckpt.scheduler_state)
    restore_rng(ckpt.rng_tensors, ckpt.rng_plain)


def resumed_state(ckpt: LoadedCheckpoint, num_processes: int) -> TrainState:
    """The checkpoint's state, its (possibly OOM-reduced) micro-batch kept and accumulation re-derived for
    this run's process count, so the effective batch survives a change of process count."""
    state = ckpt.state
    saved_procs = int(ckpt.extra.get("num_processes", 1))
    effective = state.samples_per_step(saved_procs)
    try:
        state.split_for(state.micro_batch, effective, num_processes)
    except ValueError:
        raise CheckpointError(
            f"{ckpt.path}: the run's effective batch {effective} cannot be split over {num_processes} "
            f"processes with micro-batch {state.micro_batch}. Use a process count that divides it."
        ) from None
    return state


def resume_run(run_dir: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, num_processes: int) -> Resumed | None:
    """Restores the newest complete checkpoint into the run; None when there is none."""
    path = newest_checkpoint(run_dir)
    if path is None:
        return None
    ckpt = load_checkpoint(path)
    check_identity(ckpt, identity)
    restore_training(ckpt, model, optimizer, scheduler)
    return Resumed(path, resumed_state(ckpt, num_processes))
