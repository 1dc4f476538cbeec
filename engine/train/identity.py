"""Provides the identity stamp a checkpoint carries, so a resume into another setup is refused early.

One path for every family: the engine records the base architecture, the trainable tensors and every
resolved profile key that changes the sample stream or the optimisation; the family adds what it
resolves at build time (`Family.identity`). Keys that change neither (where logs and checkpoints go, how
many loader workers, the launch layout, and what the family declares in `Family.identity_ignores`) are left
out, so changing them never blocks a resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import nn

from engine.families.base import Recipe
from engine.lora.architecture import base_fingerprint

IGNORED_KEYS = frozenset({
    "name",
    "data.num_workers",
    "data.on_error",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_last",
    "train.log_every",
    "train.device",
    "train.oom_recovery",
    "train.loss_spike_factor",
    "train.batch_size",
    "train.grad_accum",
    "train.gradient_checkpointing",
})
"""Dotted keys that change neither the samples nor the optimisation.

`train.batch_size` and `train.grad_accum` only split the effective batch, which is recorded instead
(`train.effective_batch`, with the process count): a resume at another split with the same effective batch
keeps every step's samples (`engine.train.batching`), as OOM recovery does. Gradient checkpointing
recomputes the same activations (its RNG state is preserved), so it can be switched on to resume a run that
ran out of memory."""

_SECTIONS = ("model", "lora", "data", "train")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_identity(recipe: Recipe, model: nn.Module, dataset: Any = None, num_processes: int = 1) -> dict[str, Any]:
    """Everything a checkpoint must share with the run that resumes it, as nested plain data."""
    data = recipe.profile.to_yaml_dict()
    identity: dict[str, Any] = {"family": recipe.family.name}
    ignored = IGNORED_KEYS | recipe.family.identity_ignores
    for section in _SECTIONS:
        identity[section] = {k: v for k, v in data[section].items() if f"{section}.{k}" not in ignored}
    train = recipe.profile.train
    identity["train"]["effective_batch"] = train.batch_size * train.grad_accum * num_processes
    if dataset is not None:
        identity["data"]["size"] = len(dataset)
    identity["architecture"] = base_fingerprint(model)
    identity["trainable"] = _digest(sorted((n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad))
    family_fields = recipe.family.identity(recipe, model)
    if family_fields:
        identity[recipe.family.name] = family_fields
    return identity


def identity_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of fields that differ, e.g. `lora.r: checkpoint 8, this run 16`."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(identity_differences(a, b, prefix=f"{path}."))
        elif a != b:
            diffs.append(f"{path}: checkpoint {a!r}, this run {b!r}")
    return diffs
