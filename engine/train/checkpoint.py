"""Provides training checkpoints: complete, atomically renamed into place, identity-stamped, no pickles.

A checkpoint is `checkpoints/step-N/` holding the trainable weights, optimizer state and RNG states as
safetensors, plus plain JSON. It is written into `checkpoints/.tmp-step-N/` and renamed once every file
is on disk, with `checkpoint.json` written last; a run killed mid-save leaves only a `.tmp-*` folder,
which resume ignores and the next run removes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError
from engine.train.state import TrainState

_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "checkpoint.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    plain = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = plain["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = plain["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(
    root: Path,
    state: TrainState,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    identity: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes `root/step-N` atomically and returns it; on any write error the partial folder is removed
    and a CheckpointError says so (earlier checkpoints are untouched)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _save_tensors(trainable, tmp / "trainable.safetensors")
        opt_tensors, opt_plain = _split_optimizer(optimizer_state)
        _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        _write_json(tmp / "optimizer.json", opt_plain)
        rng_tensors, rng_plain = capture_rng()
        _save_tensors(rng_tensors, tmp / "rng.safetensors")
        _write_json(tmp / "rng.json", rng_plain)
        files = sorted(p.name for p in tmp.iterdir())
        _write_json(
            tmp / MANIFEST,
            {
                "format": "lora3d-checkpoint/1",
                "state": state.to_dict(),
                "scheduler": scheduler_state,
                "identity": identity,
                "extra": extra or {},
                "files": {name: (tmp / name).stat().st_size for name in files},
            },
        )
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (e.g. SAVE then end): replace it whole
            shutil.rmtree(final.rename(root / f".tmp-old-{final.name}"))  # renamed first, as in prune_checkpoints
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"{final}: checkpoint could not be written ({exc.strerror or exc}). "
            "Free disk space or set `output.dir` on a larger disk, then rerun with --resume; "
            "the previous checkpoint is intact."
        ) from None
    return final


def _is_complete(folder: Path) -> bool:
    manifest = folder / MANIFEST
    try:
        info = json.loads(manifest.read_text())
        return all((folder / name).stat().st_size == size for name, size in info["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Partial or damaged folders are left out."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and _is_complete(child):
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def clean_partial(root: Path) -> list[Path]:
    """Removes `.tmp-*` folders a killed save left behind; returns what it removed."""
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".tmp-"):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def prune_checkpoints(root: Path, keep_last: int, protect: set[Path] | None = None) -> None:
    """Deletes all but the newest `keep_last` complete checkpoints (and never those in `protect`)."""
    protect = protect or set()
    for path in list_checkpoints(root)[:-keep_last]:
        if path not in protect:  # renamed first: a kill mid-delete leaves a .tmp- folder, never a half step-N
            shutil.rmtree(path.rename(path.with_name(f".tmp-prune-{path.name}")), ignore_errors=True)


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    trainable: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    identity: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    rng_plain: dict[str, Any]
    extra: dict[str, Any]


def load_checkpoint(folder: Path) -> LoadedCheckpoint:
    try:
        info = json.loads((folder / MANIFEST).read_text())
        trainable = load_file(str(folder / "trainable.safetensors"))
        opt = _join_optimizer(
            load_file(str(folder / "optimizer.safetensors")),
            json.loads((folder / "optimizer.json").read_text()),
        )
        rng_tensors = load_file(str(folder / "rng.safetensors"))
        rng_plain = json.loads((folder / "rng.json").read_text())
        state = TrainState.from_dict(info["state"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CheckpointError(
            f"{folder}: checkpoint is damaged or incomplete ({exc}). Delete this folder to resume from the one before it."
        ) from None
    return LoadedCheckpoint(folder, state, trainable, opt, info["scheduler"], info["identity"], rng_tensors, rng_plain, info.get("extra", {}))
