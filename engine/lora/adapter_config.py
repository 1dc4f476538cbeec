"""Provides the LoRA config an adapter read from disk loads with: its own, lora3d's metadata, or one inferred.

A foreign file without a config (Pointcept training checkpoint, MIDI-3D custom adapter, seed `.pth`,
diffusers `.bin`) gives its rank through the `lora_A` shapes and its targets through its key names; alpha
comes from the caller or the metadata, else it is assumed and the assumption is reported. Rules in
docs/interop.md.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import torch
from peft import LoraConfig

from engine.errors import CheckpointError
from engine.lora.adapter_formats import AdapterFile
from engine.lora.adapter_keys import is_lora_key, lora_module, short_keys
from engine.lora.prompt import PROMPT_ATTR
from engine.lora.targets import PTV3_MODULE_GROUPS

ASSUMED_ALPHA = 16
"""lora_alpha assumed for a file that does not record it: the default of Pointcept's DefaultLORASegmentorV2
and of the MIDI-3D LoRA training script. diffusers-named files assume alpha = r instead, as diffusers does."""


def set_aside_non_lora(file: AdapterFile, path: Path) -> dict[str, torch.Tensor]:
    """A foreign file without config may be a whole training checkpoint: keep its LoRA tensors only."""
    keep = {k: v for k, v in file.tensors.items() if is_lora_key(k) or k.startswith(f"{PROMPT_ATTR}.")}
    other = sorted(file.tensors.keys() - keep.keys())
    if not keep:
        raise CheckpointError(
            f"{path}: no LoRA tensors found, got keys like {short_keys(other, 3)}. "
            f"Pass an adapter (keys with `lora_A`/`lora_B`); a plain checkpoint is a base model (`model.pretrained`)."
        )
    if other:
        file.notes.append(
            f"set aside {len(other)} tensors that are not LoRA weights (base weights, heads: "
            f"{short_keys(other, 2)}); load those as the base, e.g. `load_base_weights(model, path)` or "
            f"`model.pretrained: {path.name}`"
        )
    return keep


def _module_ranks(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    return {m: int(v.shape[0]) for k, v in tensors.items() if (m := lora_module(k)) and k.endswith("lora_A.weight")}


def resolve_config(
    file: AdapterFile, tensors: dict[str, torch.Tensor], path: Path, lora_alpha: float | None
) -> LoraConfig:
    """The config to inject with: the file's own, else lora3d metadata, else inferred from the tensors."""
    ranks = _module_ranks(tensors)
    modules = sorted({m for k in tensors if (m := lora_module(k)) is not None})
    meta = file.meta
    if file.config is not None:
        config = copy.deepcopy(file.config)
    elif file.is_lora3d and "r" in meta:
        config = LoraConfig(r=meta["r"], lora_alpha=meta.get("lora_alpha", meta["r"]),
                            lora_dropout=meta.get("lora_dropout", 0.0), bias=meta.get("bias", "none"))
    else:
        if not ranks:
            raise CheckpointError(
                f"{path}: no `lora_A` weights found, got keys like {short_keys(sorted(tensors), 3)}. "
                f"Pass a LoRA adapter."
            )
        r = Counter(ranks.values()).most_common(1)[0][0]
        if "r" in meta and meta["r"] != r:
            raise CheckpointError(
                f"{path}: metadata `r` disagrees with the tensors, got r={meta['r']!r} and `lora_A` rows {r}. "
                f"Fix the metadata or re-save the adapter."
            )
        alpha = meta.get("lora_alpha", meta.get("alpha"))
        if alpha is None and lora_alpha is None:
            alpha = r if file.layout == "diffusers" else ASSUMED_ALPHA
            source = "diffusers' rule alpha = r" if file.layout == "diffusers" else (
                "the default of Pointcept's DefaultLORASegmentorV2 and of the MIDI-3D LoRA script")
            file.notes.append(
                f"the file records no lora_alpha: assumed {alpha} ({source}); pass `lora_alpha=` to "
                f"`load_lora_checkpoint` if it was trained with another value"
            )
        config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else lora_alpha,
                            rank_pattern={m: k for m, k in ranks.items() if k != r},
                            lora_dropout=float(meta.get("lora_dropout", 0.0)), bias=meta.get("bias", "none"))
    if lora_alpha is not None and lora_alpha != config.lora_alpha:
        if file.config is not None or file.is_lora3d or "lora_alpha" in meta:
            file.notes.append(f"lora_alpha {lora_alpha} given, replacing the file's {config.lora_alpha}")
        config.lora_alpha = lora_alpha
    # lora3d records its exact targets. Otherwise exactly the modules the tensors name: a suffix list such
    # as Pointcept's ["qkv"] would also reach same-named layers the adapter never trained (PTv3's decoder).
    config.target_modules = list(meta["targets"]) if file.is_lora3d and meta.get("targets") else modules
    config.inference_mode = False
    return config


def check_recorded_targets(file: AdapterFile, modules: list[str], path: Path) -> None:
    """A seed-style `.pth`'s `target_modules` groups (``["attn"]``) must cover the modules its tensors adapt."""
    meta = file.meta
    if file.is_lora3d:
        return  # exact targets: missing or extra tensors are named when the tensors load
    groups = meta.get("target_modules", meta.get("targets"))
    if isinstance(groups, list) and groups and all(g in PTV3_MODULE_GROUPS for g in groups):
        roles = {role for g in groups for role in PTV3_MODULE_GROUPS[g]}
        outside = [m for m in modules if m.rsplit(".", 1)[-1] not in roles]
        if outside:
            raise CheckpointError(
                f"{path}: metadata `target_modules` {groups!r} do not cover the tensors, got LoRA on "
                f"{short_keys(outside)}. Fix the metadata or re-save the adapter."
            )
