"""Provides the adapter file formats: names, header keys, and reading every adapter form lora3d accepts.

What lora3d writes (`engine.lora.adapter_io.save_lora_checkpoint`):
- a folder in PEFT's `save_pretrained` layout: ``adapter_config.json``, ``adapter_model.safetensors``
  with keys ``base_model.model.<module>.lora_A.weight`` (what `peft.PeftModel.from_pretrained` expects;
  `set_peft_model_state_dict` drops the prefix), and ``lora3d_metadata.json``. The folder of a diffusers
  model (the DiT) also holds ``pytorch_lora_weights.safetensors``, the same tensors under diffusers'
  names ``<module>.lora_A.weight``, which ``load_lora_adapter(folder, prefix=None)`` finds by name;
- one ``.safetensors`` file with diffusers' key names, and the adapter config and the metadata as JSON
  strings in its header. Every weight file carries the config under ``lora_adapter_metadata``, where
  diffusers' ``load_lora_adapter`` looks for alpha (without it diffusers assumes alpha = r);
- a ``.pth``/``.pt``/``.bin`` (the seeds' API): ``{"state_dict": <PEFT keys without prefix>,
  "metadata": <lora3d metadata>, "adapter_config": <config dict>}``, only tensors and plain values, so
  ``torch.load(weights_only=True)`` reads it.

What lora3d reads: all of the above, older lora3d files (keys without the prefix), PEFT folders,
diffusers ``save_lora_adapter`` folders (``pytorch_lora_weights.safetensors`` or ``.bin``) and files,
MIDI-3D ``save_custom_adapter`` files, seed-style ``.pth`` files and Pointcept ``DefaultLORASegmentorV2``
training checkpoints (key layouts in `engine.lora.adapter_keys`). Pickles are read with
``torch.load(weights_only=True)`` only.

Prompt MLP tensors are stored next to the LoRA tensors as ``lora3d_prompt.<stage>.<role>.{down,up}.*``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors import safe_open

from engine.errors import CheckpointError, CheckpointNotFoundError
from engine.lora.adapter_keys import normalise_keys

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PICKLE_NAME = "adapter_model.bin"
METADATA_NAME = "lora3d_metadata.json"
DIFFUSERS_WEIGHTS_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
"""What diffusers' ``save_lora_adapter`` writes into its folder (safe_serialization True / False)."""
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
"""safetensors header key where diffusers' `load_lora_adapter` reads the LoRA config (rank, alpha)."""
LORA3D_METADATA_KEY = "lora3d_metadata"
"""safetensors header key of the lora3d metadata in a single-file adapter."""
PICKLE_KEYS = ("state_dict", "lora_state_dict", "lora")
"""Keys a `.pth` may hold its tensors under (lora3d and Pointcept write `state_dict`)."""


@dataclass
class AdapterFile:
    """An adapter as read from disk, before it meets a model.

    Attributes:
        config: the PEFT config, when the file has one.
        meta: lora3d's metadata (``lora3d_version`` set), or the plain metadata of a seed-style ``.pth``.
        tensors: tensors with normalised keys (``<module>.lora_A.weight``); foreign files may also hold
            base weights, which the loader sets aside.
        layout: ``lora3d``, ``peft``, ``diffusers`` or ``state_dict`` (a bare or wrapped tensor dict).
        notes: key changes made while normalising, for the loader's message.
    """

    config: LoraConfig | None
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    layout: str
    notes: list[str] = field(default_factory=list)

    @property
    def is_lora3d(self) -> bool:
        """True when lora3d wrote the file (its metadata records targets, base and version)."""
        return "lora3d_version" in self.meta


def config_to_json(config: LoraConfig) -> str:
    """Serialise a LoraConfig exactly as PEFT writes adapter_config.json."""
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        return (Path(tmp) / CONFIG_NAME).read_text()


def config_from_dict(data: dict[str, Any], source: Path) -> LoraConfig:
    """A LoraConfig from adapter_config.json's content (PEFT's or diffusers' header form)."""
    if "peft_type" not in data and "r" not in data:
        # diffusers' pipeline-level `save_lora_weights` packs the config as `transformer.r`, ...
        components = {k.split(".", 1)[0] for k in data if "." in k}
        if len(components) == 1:
            component = components.pop()
            data = {k.removeprefix(f"{component}."): v for k, v in data.items()}
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
        ``(config or None, metadata or {}, tensors with normalised key names)``.

    Raises:
        CheckpointNotFoundError: the path does not exist.
        CheckpointError: an unreadable file.
    """
    file = read_adapter_file(path)
    return file.config, file.meta, file.tensors


def read_folder_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `lora3d_metadata.json` of an adapter folder of any kind (LoRA, head-only), or {} when there is none or
    it cannot be read (then the adapter's own loading reports it)."""
    try:
        meta = json.loads((Path(path) / METADATA_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_adapter_file(path: str | os.PathLike) -> AdapterFile:
    """Read any adapter form (see the module docstring) into an `AdapterFile`.

    Raises:
        CheckpointNotFoundError: the path does not exist.
        CheckpointError: an unreadable file, or a folder that holds no known adapter files.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: adapter not found, got a path that does not exist. Check the path.")
    try:
        if path.is_dir():
            file = _read_folder(path)
        elif path.suffix == ".safetensors":
            file = _read_single_safetensors(path)
        elif path.suffix in PICKLE_SUFFIXES:
            file = _read_pickle(path)
        else:
            raise CheckpointError(
                f"{path}: unknown adapter format, got suffix {path.suffix!r}. "
                f"Use a PEFT folder, a `.safetensors` file or a `.pth` file."
            )
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: adapter is unreadable, got error {str(exc)!r}. Re-save it.") from exc
    file.tensors, notes = normalise_keys(file.tensors, path)
    file.notes.extend(notes)
    return file


def _read_folder(path: Path) -> AdapterFile:
    for name in DIFFUSERS_WEIGHTS_NAMES:
        if (path / name).is_file() and not (path / CONFIG_NAME).is_file():
            file = _read_single_safetensors(path / name) if name.endswith(".safetensors") else _read_pickle(path / name)
            file.layout = "diffusers"
            return file
    weights = next((path / n for n in (WEIGHTS_NAME, PEFT_PICKLE_NAME) if (path / n).is_file()), None)
    if weights is None or not (path / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{path}: not a PEFT adapter folder, got files {sorted(p.name for p in path.iterdir())!r}. "
            f"It needs `{CONFIG_NAME}` and `{WEIGHTS_NAME}` (PEFT, lora3d) or `{DIFFUSERS_WEIGHTS_NAMES[0]}` "
            f"(diffusers `save_lora_adapter`)."
        )
    config = config_from_dict(json.loads((path / CONFIG_NAME).read_text()), path)
    meta = json.loads((path / METADATA_NAME).read_text()) if (path / METADATA_NAME).is_file() else {}
    tensors = _read_safetensors(weights)[0] if weights.suffix == ".safetensors" else _read_pickle(weights).tensors
    return AdapterFile(config, meta, tensors, "lora3d" if meta else "peft")


def _read_single_safetensors(path: Path) -> AdapterFile:
    tensors, header = _read_safetensors(path)
    config = config_from_dict(json.loads(header[DIFFUSERS_METADATA_KEY]), path) if DIFFUSERS_METADATA_KEY in header else None
    meta = json.loads(header.get(LORA3D_METADATA_KEY, "{}"))
    layout = "lora3d" if meta else ("diffusers" if config is not None else "state_dict")
    return AdapterFile(config, meta, tensors, layout)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file, got error {str(exc)!r}. Re-save it.") from exc


def _read_pickle(path: Path) -> AdapterFile:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects with UnpicklingError
        raise CheckpointError(
            f"{path}: could not be read safely (weights_only=True), got error {str(exc)!r}. "
            f"Convert it to safetensors."
        ) from exc
    meta: dict[str, Any] = {}
    config: LoraConfig | None = None
    if isinstance(payload, dict):
        for key in PICKLE_KEYS:
            if isinstance(payload.get(key), dict):
                meta = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
                if isinstance(payload.get("adapter_config"), dict):
                    config = config_from_dict(payload["adapter_config"], path)
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(
            f"{path}: expected a dict of tensors (optionally under `state_dict`), got {type(payload).__name__}. "
            f"Save the LoRA tensors as a flat dict."
        )
    return AdapterFile(config, meta, dict(payload), "lora3d" if "lora3d_version" in meta else "state_dict")
