"""Provides resume: continue a run from its newest complete checkpoint, or refuse with every difference.

A checkpoint restores the trainable weights, the optimizer and scheduler, every RNG and the data position
(`TrainState`), so a resumed run ends with the same weights as an uninterrupted one. It is refused when the
checkpoint's identity (`engine.train.identity`) differs from this run's, listing every difference.

A change of `train.batch_size` / `train.grad_accum` / process count that keeps the effective batch resumes
(the sample order does not depend on the split, as with OOM recovery); one that changes the effective
batch is refused, because it changes the samples of every step and the optimisation.
"""

from __future__ import annotations

import copy
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
    note: str | None = None
    """Set when the micro-batch split differs from the checkpoint's (said in an info event)."""


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None


def _saved_batch(ckpt: LoadedCheckpoint) -> dict[str, int]:
    """The batch the checkpoint's run asked for: profile split and process count (older checkpoints: its state)."""
    extra = ckpt.extra
    return {
        "batch_size": int(extra.get("batch_size", ckpt.state.micro_batch)),
        "grad_accum": int(extra.get("grad_accum", ckpt.state.grad_accum)),
        "processes": int(extra.get("num_processes", 1)),
    }


def check_identity(ckpt: LoadedCheckpoint, identity: dict[str, Any], batch: dict[str, int]) -> None:
    """Raises CheckpointError listing every identity key that differs, with both values.

    `batch` is this run's requested `batch_size`, `grad_accum` and process count: when the effective batch
    differs, the keys that make it up are listed too, so the message says which one to change back.
    """
    saved_identity = copy.deepcopy(ckpt.identity)
    saved = _saved_batch(ckpt)
    train = saved_identity.setdefault("train", {})
    if isinstance(train, dict) and "effective_batch" not in train:  # written before the key was recorded
        train["effective_batch"] = ckpt.state.samples_per_step(saved["processes"])
    diffs = identity_differences(saved_identity, identity)
    if any(d.startswith("train.effective_batch:") for d in diffs):
        diffs += [f"{'train.' if key != 'processes' else ''}{key}: checkpoint {saved[key]!r}, this run {batch[key]!r}"
                  for key in ("batch_size", "grad_accum", "processes") if saved[key] != batch[key]]
    if diffs:
        raise CheckpointError(
            f"{ckpt.path}: this checkpoint was made by a different setup and cannot be resumed here (every "
            "difference, checkpoint value first):\n  " + "\n  ".join(diffs)
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


def resumed_state(ckpt: LoadedCheckpoint, batch: dict[str, int]) -> tuple[TrainState, str | None]:
    """The checkpoint's state with this run's micro-batch split, and a note when the split changed.

    The effective batch is the same (the identity says so), so any split keeps every step's samples. The
    profile's split is used, except that an OOM reduction survives: when this run asks for the same
    `batch_size` as the checkpoint's run did and that run had to lower it, the lower one is kept.
    """
    state = ckpt.state
    saved = _saved_batch(ckpt)
    before = (state.micro_batch, state.grad_accum)
    effective = state.samples_per_step(saved["processes"])
    micro = batch["batch_size"]
    if batch["batch_size"] == saved["batch_size"] and state.micro_batch < micro:
        micro = state.micro_batch
    try:
        state.split_for(micro, effective, batch["processes"])
    except ValueError:  # the kept OOM micro-batch does not divide this process count's share: the profile's split
        state.split_for(batch["batch_size"], effective, batch["processes"])
    if (state.micro_batch, state.grad_accum) == before and saved["processes"] == batch["processes"]:
        return state, None
    kept = " (the micro-batch out-of-memory recovery chose)" if state.micro_batch < batch["batch_size"] else ""
    return state, (
        f"resuming with micro-batch {state.micro_batch}{kept} x accumulation {state.grad_accum} x "
        f"{batch['processes']} process(es); the checkpoint ran {before[0]} x {before[1]} x {saved['processes']}. "
        f"The effective batch ({effective}) and every step's samples are unchanged"
    )


def resume_run(run_dir: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, batch: dict[str, int]) -> Resumed | None:
    """Restores the newest complete checkpoint into the run; None when there is none.

    Args:
        batch: this run's requested `batch_size`, `grad_accum` and `processes`.
    """
    path = newest_checkpoint(run_dir)
    if path is None:
        return None
    ckpt = load_checkpoint(path)
    check_identity(ckpt, identity, batch)
    restore_training(ckpt, model, optimizer, scheduler)
    state, note = resumed_state(ckpt, batch)
    return Resumed(path, state, note)
