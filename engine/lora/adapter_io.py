"""Provides adapter save/load in PEFT's layout plus lora3d metadata, with architecture and tensor checks.

File formats are described in `engine.lora.adapter_formats`. Every write goes to a temporary name first
and is renamed into place.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from engine.atomic import atomic_file, atomic_folder
from engine.errors import CheckpointError
from engine.lora.adapter_formats import (
    CONFIG_NAME,
    DIFFUSERS_METADATA_KEY,
    LORA3D_METADATA_KEY,
    METADATA_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    config_to_json,
    read_lora_checkpoint,
)
from engine.lora.architecture import base_fingerprint, base_parameter_shapes, diff_parameter_shapes
from engine.lora.inject import (
    TARGETS_ATTR,
    enable_prompt_for,
    get_active_adapter,
    inject_lora_layers,
    list_adapters,
    remove_adapter,
    set_active_adapter,
)
from engine.lora.prompt import PROMPT_ATTR, get_prompt_bank, prompt_state_dict
from engine.lora.targets import is_linear_target


def _version() -> str:
    try:
        return importlib.metadata.version("lora3d")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(f"`{k}`" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _peft_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """PEFT's adapter state dict without the prompt bank (PEFT's `bias="all"` would catch its biases)."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v for k, v in state.items() if not k.startswith(f"{PROMPT_ATTR}.")}


def _adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    tensors = _peft_tensors(model, adapter_name)
    tensors.update(prompt_state_dict(model, adapter_name))
    # safetensors needs contiguous CPU tensors that share no storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _build_metadata(model: nn.Module, adapter_name: str, user: dict[str, Any] | None) -> dict[str, Any]:
    config = model.peft_config[adapter_name]
    record = dict((getattr(model, TARGETS_ATTR, {}) or {}).get(adapter_name, {}))
    modules = record.get("modules", [])
    named = dict(model.named_modules())
    return {
        "lora3d_version": _version(),
        "adapter_name": adapter_name,
        "family": record.get("family", "unknown"),
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "bias": config.bias,
        "targets": modules,
        "target_shapes": {
            n: [named[n].get_base_layer().out_features, named[n].get_base_layer().in_features] for n in modules
        },
        "record": record,
        "prompt": record.get("prompt") if record.get("enable_prompt") else None,
        "base_fingerprint": base_fingerprint(model),
        "base_parameters": base_parameter_shapes(model),
        "user": user or {},
    }


def save_lora_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    adapter_name: str | None = None,
) -> Path:
    """Save one adapter (LoRA tensors, prompt MLPs, config and metadata); never the base weights.

    Args:
        model: an injected model.
        path: a folder (PEFT layout) or a ``.safetensors`` file.
        metadata: extra JSON-serialisable values stored under ``"user"`` in the metadata.
        adapter_name: adapter to save; the active one by default.

    Returns:
        The path written.

    Raises:
        CheckpointError: a pickle suffix, a model without that adapter, or metadata that is not JSON.
    """
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: lora3d does not write pickle files, got suffix {path.suffix!r}. "
            f"Save to a folder (PEFT layout) or to a `.safetensors` file."
        )
    adapter_name = adapter_name or get_active_adapter(model)
    if adapter_name is None or adapter_name not in list_adapters(model):
        raise CheckpointError(
            f"{path}: the model has no LoRA adapter to save, got adapter {adapter_name!r}. "
            f"Inject LoRA first (present: {list_adapters(model)!r})."
        )
    tensors = _adapter_tensors(model, adapter_name)
    try:
        meta_json = json.dumps(_build_metadata(model, adapter_name, metadata), indent=2, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(
            f"{path}: `metadata` must be JSON-serialisable, got error {str(exc)!r}. "
            f"Pass plain numbers, strings, lists and dicts."
        ) from exc
    config_json = config_to_json(model.peft_config[adapter_name])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", DIFFUSERS_METADATA_KEY: config_json,
                                                   LORA3D_METADATA_KEY: meta_json})
        return path
    with atomic_folder(path) as tmp_dir:
        save_file(tensors, tmp_dir / WEIGHTS_NAME, metadata={"format": "pt", DIFFUSERS_METADATA_KEY: config_json})
        (tmp_dir / CONFIG_NAME).write_text(config_json)
        (tmp_dir / METADATA_NAME).write_text(meta_json)
    return path


def _check_architecture(model: nn.Module, meta: dict[str, Any], path: Path) -> None:
    saved = meta.get("base_fingerprint")
    if not saved:
        return
    current = base_fingerprint(model)
    if saved == current:
        return
    diffs = diff_parameter_shapes(meta.get("base_parameters", {}), base_parameter_shapes(model))
    raise CheckpointError(
        f"{path}: adapter was made for another base architecture (fingerprint {saved} != {current}), "
        f"got differences: {'; '.join(diffs)}. "
        f"Load it into the base model it was trained on."
    )


def _inject_from_checkpoint(
    model: nn.Module, config: LoraConfig, meta: dict[str, Any], adapter_name: str, path: Path
) -> None:
    targets = meta.get("targets") or sorted(config.target_modules or [])
    named = dict(model.named_modules())
    missing = [t for t in targets if t not in named or not is_linear_target(named[t])] if meta.get("targets") else []
    if missing:
        raise CheckpointError(
            f"{path}: the model lacks the adapter's target linears, got missing {_short(missing)}. "
            f"Load it into the base model it was trained on."
        )
    config.inference_mode = False
    record = dict(meta.get("record") or {"family": meta.get("family", "unknown")})
    record.pop("modules", None)
    try:
        inject_lora_layers(model, config, adapter_name, record)
    except ValueError as exc:  # PEFT: no target module found
        raise CheckpointError(
            f"{path}: the adapter's targets match no module of this model, got error {str(exc)!r}. "
            f"Load it into the base model it was trained on."
        ) from exc
    if record.get("enable_prompt"):
        enable_prompt_for(model, adapter_name)


def load_lora_checkpoint(
    model: nn.Module, path: str | os.PathLike, adapter_name: str = "default"
) -> nn.Module:
    """Load an adapter into a base model (injecting it if needed) and make it the active adapter.

    Args:
        model: the base model the adapter was trained on, plain or already carrying adapters.
        path: a PEFT folder, a ``.safetensors`` file or a ``.pth`` file.
        adapter_name: name to load the adapter under (several adapters can share one base).

    Returns:
        The same model.

    Raises:
        CheckpointError: unreadable file, other base architecture (the message names the differing
            parameters), or missing/unexpected/mis-shaped tensors (the message names them).
    """
    path = Path(path)
    config, meta, tensors = read_lora_checkpoint(path)
    _check_architecture(model, meta, path)
    injected_here = False
    if adapter_name not in list_adapters(model):
        if config is None:
            config = _config_from_meta(meta, path)
        _inject_from_checkpoint(model, config, meta, adapter_name, path)
        injected_here = True
    try:
        _load_tensors(model, tensors, adapter_name, path)
    except CheckpointError:
        if injected_here:
            remove_adapter(model, adapter_name)
        raise
    set_active_adapter(model, adapter_name)
    return model


def _config_from_meta(meta: dict[str, Any], path: Path) -> LoraConfig:
    if not meta.get("targets") or "r" not in meta:
        raise CheckpointError(
            f"{path}: no adapter config and no lora3d metadata, got neither `{CONFIG_NAME}` nor `r`/`targets`. "
            f"Inject LoRA with the training settings first, then load the tensors."
        )
    return LoraConfig(r=meta["r"], lora_alpha=meta.get("lora_alpha", meta["r"]),
                      lora_dropout=meta.get("lora_dropout", 0.0), target_modules=list(meta["targets"]),
                      bias=meta.get("bias", "none"))


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str, path: Path) -> None:
    lora = {k: v for k, v in tensors.items() if not k.startswith(f"{PROMPT_ATTR}.")}
    prompt = {k.removeprefix(f"{PROMPT_ATTR}."): v for k, v in tensors.items() if k.startswith(f"{PROMPT_ATTR}.")}
    expected = _peft_tensors(model, adapter_name)
    bank = get_prompt_bank(model)
    expected_prompt = (
        bank.adapters[adapter_name].state_dict() if bank is not None and adapter_name in bank.adapters else {}
    )
    missing = sorted(expected.keys() - lora.keys()) + sorted(
        f"{PROMPT_ATTR}.{k}" for k in expected_prompt.keys() - prompt.keys()
    )
    unexpected = sorted(lora.keys() - expected.keys()) + sorted(
        f"{PROMPT_ATTR}.{k}" for k in prompt.keys() - expected_prompt.keys()
    )
    if missing:
        raise CheckpointError(
            f"{path}: adapter is missing {len(missing)} tensors, got none for {_short(missing)}. "
            f"Re-save the adapter from a complete training run."
        )
    if unexpected:
        raise CheckpointError(
            f"{path}: adapter has tensors this model's adapter does not, got {_short(unexpected)}. "
            f"Load it into the base model and settings it was trained with."
        )
    shapes = [
        f"`{k}` {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in lora.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ] + [
        f"`{PROMPT_ATTR}.{k}` {tuple(v.shape)} != {tuple(expected_prompt[k].shape)}" for k, v in prompt.items()
        if tuple(v.shape) != tuple(expected_prompt[k].shape)
    ]
    if shapes:
        raise CheckpointError(
            f"{path}: adapter tensor shapes differ from this model's adapter, got {'; '.join(shapes[:6])}. "
            f"Load it with the rank and base model it was trained with."
        )
    result = set_peft_model_state_dict(model, lora, adapter_name=adapter_name)
    leftover = [k for k in result.unexpected_keys if not k.startswith(f"{PROMPT_ATTR}.")]
    assert not leftover, f"PEFT did not place {leftover[:3]}"
    if prompt:
        bank.adapters[adapter_name].load_state_dict(prompt, strict=True)
