"""Provides the adapter file formats: names, header keys, and reading a folder, `.safetensors` or `.pth`.

On-disk forms:
- a folder: ``adapter_config.json`` (written by `peft.LoraConfig.save_pretrained`),
  ``adapter_model.safetensors`` (PEFT key names, e.g. ``enc.enc3.block0.attn.qkv.lora_A.weight``, which
  `peft.set_peft_model_state_dict` and diffusers' ``load_lora_adapter`` accept) and ``lora3d_metadata.json``;
- one ``.safetensors`` file, with the adapter config and the metadata as JSON strings in its header.
  Both weight files carry the config under ``lora_adapter_metadata``, where diffusers' ``load_lora_adapter``
  looks for alpha (without it diffusers assumes alpha = r);
- ``.pth``/``.pt``/``.bin`` for reading only (``torch.load(weights_only=True)``): lora3d never writes pickles.

Prompt MLP tensors are stored next to the LoRA tensors as ``lora3d_prompt.<stage>.<role>.{down,up}.*``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors import safe_open

from engine.errors import CheckpointError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
METADATA_NAME = "lora3d_metadata.json"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
"""safetensors header key where diffusers' `load_lora_adapter` reads the LoRA config (rank, alpha)."""
LORA3D_METADATA_KEY = "lora3d_metadata"
"""safetensors header key of the lora3d metadata in a single-file adapter."""
_LEGACY_PARTS = ("lora_A", "lora_B")


def config_to_json(config: LoraConfig) -> str:
    """Serialise a LoraConfig exactly as PEFT writes adapter_config.json."""
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        return (Path(tmp) / CONFIG_NAME).read_text()


def config_from_dict(data: dict[str, Any], source: Path) -> LoraConfig:
    try:
        config = LoraConfig.from_peft_type(**data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: `adapter_config.json` is not a PEFT LoRA config, got error {str(exc)!r}. "
            f"Re-save the adapter with lora3d or PEFT."
        ) from exc
    if not isinstance(config, LoraConfig):
        raise CheckpointError(
            f"{source}: adapter is not a LoRA adapter, got peft_type {data.get('peft_type')!r}. "
            f"Use a LoRA adapter."
        )
    return config


def read_lora_checkpoint(path: str | os.PathLike) -> tuple[LoraConfig | None, dict[str, Any], dict[str, torch.Tensor]]:
    """Read an adapter from a folder, a ``.safetensors`` file or a ``.pth`` file.

    Returns:
        ``(config or None, lora3d metadata or {}, tensors with PEFT key names)``.

    Raises:
        CheckpointError: a missing or unreadable file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: adapter not found, got a path that does not exist. Check the path.")
    config: LoraConfig | None = None
    meta: dict[str, Any] = {}
    try:
        if path.is_dir():
            weights = path / WEIGHTS_NAME
            if not weights.is_file() or not (path / CONFIG_NAME).is_file():
                raise CheckpointError(
                    f"{path}: not a PEFT adapter folder, got files {sorted(p.name for p in path.iterdir())!r}. "
                    f"It needs `{CONFIG_NAME}` and `{WEIGHTS_NAME}`."
                )
            config = config_from_dict(json.loads((path / CONFIG_NAME).read_text()), path)
            if (path / METADATA_NAME).is_file():
                meta = json.loads((path / METADATA_NAME).read_text())
            tensors = _read_safetensors(weights)[0]
        elif path.suffix == ".safetensors":
            tensors, header = _read_safetensors(path)
            if DIFFUSERS_METADATA_KEY in header:
                config = config_from_dict(json.loads(header[DIFFUSERS_METADATA_KEY]), path)
            meta = json.loads(header.get(LORA3D_METADATA_KEY, "{}"))
        elif path.suffix in PICKLE_SUFFIXES:
            tensors, meta = _read_pickle(path)
        else:
            raise CheckpointError(
                f"{path}: unknown adapter format, got suffix {path.suffix!r}. "
                f"Use a PEFT folder, a `.safetensors` file or a `.pth` file."
            )
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: adapter is unreadable, got error {str(exc)!r}. Re-save it.") from exc
    return config, meta, _normalise_keys(tensors)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file, got error {str(exc)!r}. Re-save it.") from exc


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects with UnpicklingError
        raise CheckpointError(
            f"{path}: could not be read safely (weights_only=True), got error {str(exc)!r}. "
            f"Convert it to safetensors."
        ) from exc
    meta: dict[str, Any] = {}
    if isinstance(payload, dict):
        for key in ("state_dict", "lora_state_dict", "lora"):
            if isinstance(payload.get(key), dict):
                meta = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(
            f"{path}: expected a dict of tensors (optionally under `state_dict`), got {type(payload).__name__}. "
            f"Save the LoRA tensors as a flat dict."
        )
    return dict(payload), meta


def _normalise_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map foreign key styles to PEFT's: drop ``base_model.model.``, add ``.weight`` to bare ``lora_A``."""
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix("base_model.model.").removeprefix("module.")
        if key.rsplit(".", 1)[-1] in _LEGACY_PARTS:
            key = f"{key}.weight"
        out[key] = value
    return out
