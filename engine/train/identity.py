"""Provides the identity stamp a checkpoint carries, so a resume into another setup is refused early."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import nn

from engine.profile.schema import Profile

# Keys that belong to the adapter, not to the base architecture.
_ADAPTER_MARKERS = ("lora_", "lora3d_prompt", "modules_to_save")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def architecture_fingerprint(model: nn.Module) -> str:
    """A hash of the base model's parameter names and shapes (adapter parameters excluded)."""
    rows = []
    for name, param in model.state_dict().items():
        if any(marker in name for marker in _ADAPTER_MARKERS):
            continue
        rows.append((name.replace(".base_layer", ""), list(param.shape)))
    return _digest(sorted(rows))


def model_identity(model: nn.Module, profile: Profile, dataset: Any = None) -> dict[str, Any]:
    """Architecture, LoRA configuration and data the checkpoint was made with."""
    lora = profile.lora.model_dump(mode="json")
    trainable = sorted((n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad)
    data = {"root": str(profile.data.root) if profile.data.root else "builtin", "split": profile.data.train_split}
    if dataset is not None:
        data["size"] = len(dataset)
    return {
        "family": profile.model.family,
        "task": profile.model.task,
        "architecture": architecture_fingerprint(model),
        "lora": lora,
        "trainable": _digest(trainable),
        "data": data,
    }


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
