"""Provides loading of PTv3 weights from Pointcept/SceneSplat checkpoints (.pth) and .safetensors files, and
preparing a segmentor or language model as a frozen base for fine-tuning (any PTv3-based family reuses it).

Pointcept's CheckpointSaver writes `{"epoch", "state_dict", "optimizer", ...}` with keys
`module.backbone.<ptv3 key>` under DDP (SceneSplat's released language checkpoint has this form);
bare state dicts with or without `backbone.` are accepted too. `.pth` files are read with
`torch.load(weights_only=True)` only: a file that needs arbitrary pickle is refused.

A Pointcept `DefaultLORASegmentorV2` checkpoint wraps `backbone.enc` in PEFT: its keys read
`backbone.enc.base_model.model.<enc key>` and `....attn.qkv.base_layer.weight`, next to the LoRA tensors.
`load_ptv3_state_dict` reads it as the base it was trained on (frozen weights + trained head) and sets
the LoRA tensors aside, saying so; `engine.lora.load_lora_checkpoint` reads those from the same file.

`save_ptv3_checkpoint` writes what Pointcept's and SceneSplat's tester read: `{"epoch", "state_dict"}`.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.atomic import atomic_file
from engine.errors import CheckpointError, CheckpointNotFoundError, Lora3dWarning

_PEFT_WRAP = "base_model.model."
_LORA_PARTS = frozenset({"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"})

_CONVERT_HINT = (
    "Convert it once where you trust the file: `python -c \"import torch; from safetensors.torch import "
    "save_file; ckpt = torch.load('{path}', weights_only=False); sd = ckpt.get('state_dict', ckpt); "
    "save_file({{k: v.contiguous() for k, v in sd.items()}}, 'model.safetensors')\"` and load model.safetensors"
)


@dataclass
class LoadReport:
    """What `load_pretrained` matched.

    Attributes:
        path: the checkpoint file.
        loaded: keys copied into the model.
        missing: model keys the checkpoint lacks.
        unexpected: checkpoint keys the model lacks.
        mismatched: (key, checkpoint shape, model shape) for keys present in both with other shapes.
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every key matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def mismatch_summary(self) -> str:
        """What did not match, for an error message: counts and the first keys of each kind."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (first {self.missing[:3]!r})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (first {self.unexpected[:3]!r})")
        if self.mismatched:
            k, a, b = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} shape mismatches (first {k!r}: checkpoint {a} vs model {b})")
        return "; ".join(parts)


def _read_file(path: Path) -> object:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file, got {type(exc).__name__}: {exc}. "
                                  "Re-download or re-export the file.") from exc
    with path.open("rb") as fh:
        head = fh.read(2)
    # torch.save writes a zip archive; the legacy format is a bare pickle stream (protocol 2+).
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint, got a file that is neither a torch "
                              "zip archive nor a pickle stream. Re-download or re-save the file.")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = found.group(1) if found else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: the checkpoint holds objects that need unsafe pickle loading, got {detail!r}. "
            + _CONVERT_HINT.format(path=path) + "."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint, got {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}. Re-download or re-save the file.") from exc


def load_ptv3_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a PTv3 base state dict: `read_state_dict`, then a PEFT-wrapped (Pointcept LoRA) checkpoint's base
    weights under their original names, its LoRA tensors set aside with a warning."""
    return _unwrap_peft(read_state_dict(path), Path(path))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict as stored, unwrapping `{"state_dict": ...}` and stripping DDP's `module.` prefix.

    Args:
        path: a `.pth`/`.pt` checkpoint (Pointcept/SceneSplat training checkpoint or a bare state
            dict) or a `.safetensors` file.

    Returns:
        Tensors by key; keys may still start with `backbone.` (wrapper checkpoints).

    Raises:
        CheckpointError: when the file is missing, empty, corrupt, truncated, needs pickle, or holds
            no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: checkpoint file not found, got {str(path)!r}. Check the path.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty, got 0 bytes. Re-download or re-save the file.")
    obj = _read_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:5]!r}"
        raise CheckpointError(f"{path}: no state dict of tensors found, got {kind}. "
                              "Pass a Pointcept checkpoint ({'state_dict': ...}) or a saved model.state_dict().")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _unwrap_peft(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The base weights of a PEFT-wrapped checkpoint under their original names; LoRA tensors set aside."""
    if not any(_PEFT_WRAP in k or ".base_layer." in k for k in state):
        return state
    lora = [k for k in state if _LORA_PARTS.intersection(k.split("."))]
    base = {
        k.replace(f".{_PEFT_WRAP}", ".").removeprefix(_PEFT_WRAP).replace(".base_layer.", "."): v
        for k, v in state.items() if k not in set(lora)
    }
    if lora:
        warnings.warn(
            f"{path}: a PEFT-wrapped (Pointcept LoRA) checkpoint: read its base weights under their original names "
            f"and set aside {len(lora)} LoRA tensors; load those with `load_lora_checkpoint(model, {str(path)!r})`.",
            Lora3dWarning,
            stacklevel=3,
        )
    return base


def save_ptv3_checkpoint(
    state: dict[str, torch.Tensor], out: str | Path, bare: bool = False, info: dict | None = None
) -> Path:
    """Writes a PTv3 model's state dict as a checkpoint file, atomically.

    Args:
        state: the model's state dict (keys `backbone.*`, `seg_head.*`).
        out: a `.pth`/`.pt` or `.safetensors` file.
        bare: for `.pth`/`.pt`, write the state dict alone (`model.load_state_dict(torch.load(out))`)
            instead of Pointcept's layout `{"epoch": 0, "state_dict": ..., "lora3d": info}`, which
            Pointcept's and SceneSplat's testers (`checkpoint["state_dict"]`, `checkpoint["epoch"]`) and
            lora3d's `model.pretrained` read. `.safetensors` is always the flat state dict.
        info: plain values recorded under `"lora3d"` in the Pointcept layout (e.g. the merged adapter).

    Returns:
        The path written.
    """
    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_file(out) as tmp:
        if out.suffix == ".safetensors":
                save_file(tensors, str(tmp), metadata={"format": "pt"})
        elif bare:
            torch.save(tensors, tmp)
        else:
            # `epoch` only feeds the testers' log line; a merge is not a training epoch.
            torch.save({"epoch": 0, "state_dict": tensors, "lora3d": dict(info or {})}, tmp)
    return out


def _match_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adds or strips `backbone.` so the checkpoint's keys line up with the model's."""
    model_keys = set(model.state_dict())
    model_wrapped = any(k.startswith("backbone.") for k in model_keys)
    ckpt_wrapped = any(k.startswith("backbone.") for k in state)
    if model_wrapped and not ckpt_wrapped:
        return {f"backbone.{k}": v for k, v in state.items()}
    if ckpt_wrapped and not model_wrapped:
        return {(k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()}
    return state


def load_pretrained(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Loads a checkpoint into a PTv3 backbone or one of its wrappers.

    Args:
        model: `PointTransformerV3`, `PTv3Segmentor` or `PTv3LanguageModel`.
        path: checkpoint file (see `load_ptv3_state_dict`).
        strict: raise unless every key matches in name and shape. When False, matching keys are
            loaded and the rest is only reported (Pointcept's CheckpointLoader skips shape mismatches).

    Returns:
        The load report.

    Raises:
        CheckpointError: when strict and anything is missing, unexpected or mismatched.
    """
    state = _match_prefix(load_ptv3_state_dict(path), model)
    own = model.state_dict()
    report = LoadReport(path=str(path))
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state]
    if strict and not report.ok:
        raise CheckpointError(
            f"{path}: checkpoint does not match the model, got {report.mismatch_summary()}. "
            "Build the model with the checkpoint's config (e.g. SCENESPLAT_CONFIG) or load with strict=False."
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


# ------------------------------------------------------------------------------- a base for fine-tuning
_CHECKPOINT_NAMES = ("model/model_best.pth", "model/model_last.pth", "model_best.pth", "model_last.pth",
                     "model.safetensors", "model.pth")
"""Where Pointcept's trainer and lora3d's merge put the weights inside a run folder."""


def resolve_checkpoint_file(path: Path) -> Path:
    """A checkpoint file, or the usual Pointcept file inside a folder (`model/model_best.pth`, ...)."""
    path = Path(path)
    if path.is_dir():
        for name in _CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path}: no checkpoint found in the folder, got files {sorted(p.name for p in path.iterdir())[:8]!r}. "
            f"Point `model.pretrained` at the .pth or .safetensors file (looked for {', '.join(_CHECKPOINT_NAMES)})."
        )
    return path


def load_base_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Loads a Pointcept/SceneSplat checkpoint into a segmentor or language model.

    The backbone loads strictly. A `seg_head.*` in the checkpoint is loaded when its shape equals the
    model's head (same classes) and skipped otherwise (a new dataset's classes); a language model
    ignores it.

    Returns:
        `{"path", "head": "loaded" | "skipped" | "none", "notes": [...]}`: the notes say what was skipped.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped backbone keys (the message names them).
    """
    path = resolve_checkpoint_file(Path(path))
    state = load_ptv3_state_dict(path)
    head = {k[len("seg_head."):]: v for k, v in state.items() if k.startswith("seg_head.")}
    body = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("seg_head.")}
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in body]
    unexpected = [k for k in body if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in body.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[:3]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[:3]!r})")
        if mismatched:
            k, a, b = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (first {k!r}: checkpoint {a} vs model {b})")
        raise CheckpointError(
            f"{path}: the checkpoint's backbone does not match `model.backbone`, got {'; '.join(parts)}. "
            "Choose the backbone the checkpoint was trained with (`scenesplat` for SceneSplat's released "
            "checkpoints, `pointcept` for Pointcept PT-v3m1) or give its keyword arguments as a mapping."
        )
    model.backbone.load_state_dict(body, strict=True)
    head_status = "none"
    notes = []
    if head and isinstance(getattr(model, "seg_head", None), nn.Linear):
        own_head = model.seg_head.state_dict()
        if all(k in head and head[k].shape == v.shape for k, v in own_head.items()):
            model.seg_head.load_state_dict({k: head[k] for k in own_head})
            head_status = "loaded"
        else:
            head_status = "skipped"
            shape = tuple(head["weight"].shape) if "weight" in head else "?"
            notes.append(f"{path}: its seg_head {shape} does not fit the model's {tuple(own_head['weight'].shape)} "
                         "(other classes): the head starts from random weights")
    return {"path": str(path), "head": head_status, "notes": notes}


def _keep_eval(module: nn.Module, _inputs: object) -> None:
    module.training = False


def freeze_batch_norm(model: nn.Module) -> None:
    """Keeps every BatchNorm of a frozen base in eval mode even under `model.train()`.

    NOTE: a fine-tune must never move the base's running statistics, or the saved adapter plus the base
    would not reproduce the trained model (a forward pre-hook resets `training` on every call).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.register_forward_pre_hook(_keep_eval)
