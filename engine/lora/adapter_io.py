"""Provides adapter save/load: PEFT's layout plus lora3d metadata, foreign layouts, base checks.

File formats are described in `engine.lora.adapter_formats`, key layouts in `engine.lora.adapter_keys`
and the file-to-tool table in docs/interop.md. Every write goes to a temporary name first and is renamed
into place.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from engine.atomic import atomic_file, atomic_folder
from engine.errors import CheckpointError, Lora3dWarning
from engine.lora.adapter_config import check_recorded_targets, resolve_config, set_aside_non_lora
from engine.lora.adapter_formats import (
    CONFIG_NAME,
    DIFFUSERS_METADATA_KEY,
    DIFFUSERS_WEIGHTS_NAMES,
    LORA3D_METADATA_KEY,
    METADATA_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    AdapterFile,
    config_to_json,
    read_adapter_file,
    read_lora_checkpoint,  # noqa: F401  (re-exported: older callers import it from here)
)
from engine.lora.adapter_keys import (
    PEFT_PREFIX,
    align_to_model,
    describe_key_mismatch,
    short_keys,
)
from engine.lora.architecture import (
    base_fingerprint,
    base_parameter_shapes,
    base_weights_signature,
    diff_parameter_shapes,
    same_weights,
    trained_base_parameters,
)
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
    trained = trained_base_parameters(model)
    signature = base_weights_signature(model, skip=trained) or {}
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
        "base_weights_digest": signature.get("digest"),
        "base_weights_sketch": signature.get("sketch"),
        "base_weights_dtype": signature.get("dtype"),
        "base_weights_skipped": trained,
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
        path: a folder (PEFT's `save_pretrained` layout; a diffusers model's folder also gets diffusers'
            ``pytorch_lora_weights.safetensors``), a ``.safetensors`` file (diffusers' key names), or a
            ``.pth``/``.pt``/``.bin`` file (tensors and plain values only, read back with
            ``torch.load(weights_only=True)``).
        metadata: extra JSON-serialisable values stored under ``"user"`` in the metadata.
        adapter_name: adapter to save; the active one by default.

    Returns:
        The path written.

    Raises:
        CheckpointError: a model without that adapter, or metadata that is not JSON.
    """
    path = Path(path)
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
    header = {"format": "pt", DIFFUSERS_METADATA_KEY: config_json}
    if path.suffix in PICKLE_SUFFIXES:
        payload = {"state_dict": tensors, "metadata": json.loads(meta_json), "adapter_config": json.loads(config_json)}
        with atomic_file(path) as tmp:
            torch.save(payload, tmp)
        return path
    if path.suffix == ".safetensors":
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={**header, LORA3D_METADATA_KEY: meta_json})
        return path
    with atomic_folder(path) as tmp_dir:
        save_file({f"{PEFT_PREFIX}{k}": v for k, v in tensors.items()}, tmp_dir / WEIGHTS_NAME, metadata=header)
        if hasattr(model, "load_lora_adapter"):
            # A diffusers model: its `load_lora_adapter(folder, prefix=None)` finds this file by name, and
            # cannot take the prefixed one (PEFT matches targets against the state dict's key names).
            save_file(tensors, tmp_dir / DIFFUSERS_WEIGHTS_NAMES[0], metadata=header)
        (tmp_dir / CONFIG_NAME).write_text(config_json)
        (tmp_dir / METADATA_NAME).write_text(meta_json)
    return path


def _recorded_base(meta: dict[str, Any]) -> str:
    user = meta.get("user") or {}
    return str(user.get("pretrained") or meta.get("base_name") or "an unrecorded base")


def check_base(model: nn.Module, meta: dict[str, Any], path: Path, base_name: str | None = None) -> None:
    """Refuse an adapter recorded for another architecture; warn when the weights differ.

    Raises:
        CheckpointError: the adapter's base architecture differs (the message names the parameters).

    Warns:
        Lora3dWarning: same architecture, other weights (digests differ).
    """
    current_name = base_name or type(model).__name__
    saved = meta.get("base_fingerprint")
    if saved and saved != base_fingerprint(model):
        diffs = diff_parameter_shapes(meta.get("base_parameters", {}), base_parameter_shapes(model))
        raise CheckpointError(
            f"{path}: adapter was made for another base architecture ({_recorded_base(meta)}, fingerprint {saved}; "
            f"this base {current_name}, fingerprint {base_fingerprint(model)}), got differences: {'; '.join(diffs)}. "
            f"Load it into the base model it was trained on."
        )
    digest = meta.get("base_weights_digest")
    if not digest:
        return
    current = base_weights_signature(model, skip=meta.get("base_weights_skipped", []))
    saved_signature = {"digest": digest, "sketch": meta.get("base_weights_sketch"),
                       "dtype": meta.get("base_weights_dtype")}
    if current is not None and not same_weights(saved_signature, current):
        warnings.warn(
            f"{path}: adapter was trained on other base weights ({_recorded_base(meta)}, weights digest {digest}) "
            f"than this base ({current_name}, weights digest {current['digest']}); same architecture, so it loads, but "
            f"its results are not what was trained. Use the base it was trained on unless this is intended.",
            Lora3dWarning,
            stacklevel=3,
        )


def _inject(model: nn.Module, config: LoraConfig, file: AdapterFile, adapter_name: str, path: Path) -> None:
    named = dict(model.named_modules())
    modules = list(config.target_modules)
    not_linear = [m for m in modules if m in named and not is_linear_target(named[m])]
    missing = [m for m in modules if m not in named] + not_linear
    if missing:
        raise CheckpointError(
            f"{path}: the model lacks the adapter's target linears, got missing {short_keys(missing)}. "
            f"Load it into the base model it was trained on."
        )
    meta = file.meta
    record = dict(meta.get("record") or {"family": meta.get("family", "unknown")}) if file.is_lora3d else {
        "family": "unknown", "imported_from": file.layout,
        "target_modules": meta.get("target_modules", meta.get("targets")), "enable_prompt": False,
    }
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
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = "default",
    lora_alpha: float | None = None,
    base_name: str | None = None,
) -> nn.Module:
    """Load an adapter into a base model (injecting it if needed) and make it the active adapter.

    Reads lora3d's own files and the foreign forms listed in docs/interop.md (PEFT, diffusers, MIDI-3D,
    Pointcept, seed ``.pth``); every conversion or assumption is reported as a `Lora3dWarning`.

    Args:
        model: the base model the adapter was trained on, plain or already carrying adapters.
        path: an adapter folder, a ``.safetensors`` file or a ``.pth`` file.
        adapter_name: name to load the adapter under (several adapters can share one base).
        lora_alpha: alpha for files that do not record it (Pointcept ``.pth``, MIDI-3D custom files).
        base_name: how to name this base in messages (e.g. its checkpoint path).

    Returns:
        The same model.

    Raises:
        CheckpointError: unreadable file, other base architecture (the message names the differing
            parameters), or missing/unexpected/mis-shaped tensors (the message names them).
        CheckpointNotFoundError: the path does not exist.
    """
    path = Path(path)
    file = read_adapter_file(path)
    if file.is_lora3d:
        check_base(model, file.meta, path, base_name)
    tensors = file.tensors if (file.config is not None or file.is_lora3d) else set_aside_non_lora(file, path)
    check_finite(tensors, path)
    tensors, mapped = align_to_model(tensors, model, path)
    if mapped:
        file.notes.append(mapped)
    config = resolve_config(file, tensors, path, lora_alpha)
    check_recorded_targets(file, list(config.target_modules), path)
    check_config_ranks(config, tensors, path)
    injected_here = False
    if adapter_name not in list_adapters(model):
        _inject(model, config, file, adapter_name, path)
        injected_here = True
    try:
        _load_tensors(model, tensors, adapter_name, path)
    except CheckpointError:
        if injected_here:
            remove_adapter(model, adapter_name)
        raise
    set_active_adapter(model, adapter_name)
    if file.notes:
        warnings.warn(f"{path}: read as a {file.layout} adapter: {'; '.join(file.notes)}.", Lora3dWarning, stacklevel=2)
    return model


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Every floating-point tensor is free of NaN and infinity (a diverged run's adapter would load silently and
    poison every output, or a merged base).

    Raises:
        CheckpointError: naming how many tensors are affected and the first few.
    """
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(
            f"{path}: adapter holds NaN or infinite values, got {len(bad)} of {len(tensors)} tensors affected "
            f"({short_keys(bad, 3)}). The run that wrote it diverged: use an earlier checkpoint or `adapter-best/`, "
            "or retrain with a lower `train.lr`."
        )


def check_config_ranks(config: LoraConfig, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The config asks for no larger rank than the file's `lora_A` tensors have, checked before injection
    allocates the layers (a config saying r = 2^24 next to rank-8 tensors would allocate gigabytes first).

    Raises:
        CheckpointError: naming the config's rank and the tensors' ranks.
    """
    ranks = {int(v.shape[0]) for k, v in tensors.items() if k.endswith("lora_A.weight") and v.ndim >= 1}
    if not ranks:
        return
    asked = max([int(config.r), *(int(r) for r in (config.rank_pattern or {}).values())])
    if asked > max(ranks):
        where = path / CONFIG_NAME if path.is_dir() and (path / CONFIG_NAME).is_file() else path
        raise CheckpointError(
            f"{where}: the adapter config asks for rank {asked}, but its `lora_A` tensors have rank "
            f"{', '.join(map(str, sorted(ranks)))}. Fix `r` (and `rank_pattern`) in the config to the tensors' "
            "rank, or re-save the adapter."
        )


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
        hint = describe_key_mismatch(unexpected, missing)
        raise CheckpointError(
            f"{path}: adapter is missing {len(missing)} tensors, got none for {short_keys(missing, 6)}"
            f"{f' ({hint})' if hint else ''}. Re-save the adapter from a complete training run."
        )
    if unexpected:
        raise CheckpointError(
            f"{path}: adapter has tensors this model's adapter does not, got {short_keys(unexpected, 6)}. "
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

