"""Provides Sonata adapter I/O: the LoRA adapter plus the trained head, and Pointcept's two checkpoint layouts.

A run's `adapter/` holds PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`, lora3d metadata)
and `head.safetensors`: every tensor trained in full next to the adapter (`seg_head.*`, and `backbone.dec.*`
when the decoder trained). Linear probing trains no adapter: the folder holds `head.safetensors` and
`lora3d_metadata.json` only.

Back into Pointcept:
- `export_lora_segmentor` writes `{"epoch", "state_dict"}` with exactly the keys of
  `DefaultLORASegmentorV2(use_lora=True).state_dict()` (base, `backbone.enc.base_model.model.*` LoRA named
  `default`, head), which Pointcept's tester and `model.load_state_dict` load strictly;
- `lora3d merge` folds the adapter into the weights: `DefaultSegmentorV2`'s layout (`backbone.*`, `seg_head.*`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.atomic import atomic_file
from engine.errors import CheckpointError
from engine.lora import list_adapters, load_lora_checkpoint, save_lora_checkpoint
from engine.lora.inject import is_lora_parameter_name
from engine.models.sonata import pointcept_state_dict

HEAD_FILE = "head.safetensors"
"""The tensors trained in full next to the adapter (head, and a trained decoder)."""
METADATA_FILE = "lora3d_metadata.json"
FULL_FILE = "model.safetensors"
"""What a `lora.method: full` run writes instead of an adapter (every weight)."""


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter that is not LoRA, by its model key (the head, a trained decoder)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
            if p.requires_grad and not is_lora_parameter_name(n)}


def save_adapter(model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
    """The LoRA adapter in PEFT layout (when the model has one) plus `head.safetensors`."""
    folder = Path(folder)
    if list_adapters(model):
        save_lora_checkpoint(model, folder, metadata=metadata)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METADATA_FILE).write_text(json.dumps({"user": metadata, "adapter": None,
                                                        "note": "linear probing: no LoRA, see head.safetensors"},
                                                       indent=2))
    head = trained_tensors(model)
    if head:
        save_file(head, str(folder / HEAD_FILE), metadata={"format": "pt"})


def load_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Loads an adapter folder written by a sonata run: LoRA (when present) and `head.safetensors`.

    Args:
        model: the base model (`SonataFamily.build_model`).
        folder: the run's `adapter/` (or `adapter-best/`) folder; a `lora.method: full` run's folder loads every
            weight.
        adapter_name: the name to load the LoRA under; it becomes the active adapter.

    Returns:
        The same model.

    Raises:
        CheckpointError: no such folder or nothing to load in it, or head tensors whose names or shapes the
            model does not have.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not an adapter folder, got no such directory. Pass a run's `adapter/`.")
    if (folder / FULL_FILE).is_file():
        # `lora.method: full`: the folder holds every weight (engine.train.trainer.save_full_model).
        model.load_state_dict(load_file(str(folder / FULL_FILE)), strict=True)
        return model
    if not (folder / "adapter_config.json").is_file() and not (folder / HEAD_FILE).is_file():
        raise CheckpointError(f"{folder}: holds no adapter (adapter_config.json), head ({HEAD_FILE}) or full model "
                              f"({FULL_FILE}). Pass the `adapter/` folder a sonata run wrote.")
    if (folder / "adapter_config.json").is_file():
        load_lora_checkpoint(model, folder, adapter_name=adapter_name)
    head_file = folder / HEAD_FILE
    if head_file.is_file():
        head = load_file(str(head_file))
        own = model.state_dict()
        unknown = [k for k in head if k not in own]
        mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in head.items()
                      if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if unknown or mismatched:
            detail = (f"unknown keys {unknown[:3]}" if unknown else
                      f"{mismatched[0][0]} is {mismatched[0][1]} in the file, {mismatched[0][2]} in the model")
            raise CheckpointError(
                f"{head_file}: the trained head does not fit the model, got {detail}. Build the model with the run's "
                "profile (its profile.resolved.yaml: same `model.num_classes` and backbone)."
            )
        model.load_state_dict(head, strict=False)
    return model


def _check_pointcept_lora(model: nn.Module) -> None:
    """DefaultLORASegmentorV2 holds LoRA on every encoder `qkv` and nowhere else (its config is fixed)."""
    records = getattr(model, "lora3d_targets", {})
    if len(records) != 1:
        return
    modules = next(iter(records.values()))["modules"]
    wanted = [n for n, _ in model.named_modules() if n.startswith("backbone.enc.") and n.endswith(".attn.qkv")]
    if sorted(modules) != sorted(wanted):
        extra = sorted(set(modules) - set(wanted))
        raise CheckpointError(
            f"DefaultLORASegmentorV2 adapts every encoder `qkv` only (`target_modules=['qkv']`), got LoRA on "
            f"{extra[:2] or 'part of the encoder'}. Export runs of the `pointcept-lora` preset, or fold this adapter "
            "into the weights with `lora3d merge` (DefaultSegmentorV2 layout)."
        )


def export_lora_segmentor(model: nn.Module, out: str | Path, epoch: int = 0) -> Path:
    """Writes a model with one qkv adapter as a DefaultLORASegmentorV2 training checkpoint, atomically.

    Pointcept loads it with `python tools/test.py --config-file <the ft-lora config> --options weight=OUT`, or
    `model.load_state_dict(torch.load(OUT)["state_dict"])` on `DefaultLORASegmentorV2(use_lora=True, ...)`
    built with the run's rank and alpha (`lora_r`, `lora_alpha`).

    Raises:
        CheckpointError: LoRA outside the encoder's qkv, or several adapters.
    """
    _check_pointcept_lora(model)
    state = {k: v.detach().cpu().contiguous() for k, v in pointcept_state_dict(model).items()}
    out = Path(out)
    with atomic_file(out) as tmp:
        torch.save({"epoch": int(epoch), "state_dict": state}, tmp)
    return out
