"""Provides training checkpoints: complete, atomically renamed into place, identity-stamped, no pickles.

A checkpoint is `checkpoints/step-N/` holding the trainable weights, optimizer state and RNG states as
safetensors, plus plain JSON. It is written into `checkpoints/.tmp-step-N/` and renamed once every file
is on disk, with `checkpoint.json` (the manifest, listing every file's size) written last; a run killed
mid-save leaves only a `.tmp-*` folder, which resume ignores and the next run tidies (`clean_partial`).

NOTE: nothing here deletes a checkpoint before a newer complete one is in place under its own name, so at
every instant the newest step that was ever complete has a complete folder (a re-save of a step goes to
`step-N.G`, see `save_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError
from engine.train.state import TrainState
from engine.write_errors import TRAIN_ELSEWHERE, write_error

_STEP_DIR = re.compile(r"^step-(\d+)(?:\.(\d+))?$")
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


def _parse_name(name: str) -> tuple[int, int] | None:
    """(step, generation) of a checkpoint folder name: `step-N` is generation 0, `step-N.G` a re-save."""
    match = _STEP_DIR.match(name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def _step_folders(root: Path) -> list[tuple[tuple[int, int], Path]]:
    """Every `step-N[.G]` folder, complete or not, oldest first."""
    if not root.is_dir():
        return []
    found = [(key, child) for child in root.iterdir() if (key := _parse_name(child.name)) and child.is_dir()]
    return sorted(found)


def _retire(path: Path, why: str) -> None:
    """Deletes a checkpoint folder that a newer complete one supersedes. Renamed first: a kill mid-delete
    leaves a `.tmp-<why>-` folder (which the next run removes), never a half `step-N`."""
    with contextlib.suppress(OSError):
        shutil.rmtree(path.rename(path.with_name(f".tmp-{why}-{path.name}")), ignore_errors=True)


def resume_advice(root: Path) -> str:
    """What to do after a failed write, depending on whether a complete checkpoint exists to resume from."""
    found = list_checkpoints(root)
    if found:
        return f"then continue with --resume; the previous checkpoint is intact ({found[-1].name})"
    return "then rerun the same command (this run has no complete checkpoint yet, so --resume would start over)"


def save_checkpoint(
    root: Path,
    state: TrainState,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    identity: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes the checkpoint of `state.step` atomically and returns its folder.

    The folder is `step-N`, or `step-N.G` when step N was saved before (a SAVE request, then the stop or
    the end at the same step): the new one is renamed into place under a fresh name first, and only then
    are the older saves of step N deleted, so a complete checkpoint of step N exists at every instant.

    Raises:
        CheckpointError: a write failed (full disk, read-only folder); the partial folder is removed and
            every earlier checkpoint is untouched.
    """
    root.mkdir(parents=True, exist_ok=True)
    earlier = [path for (step, _), path in _step_folders(root) if step == state.step]
    generation = max(_parse_name(p.name)[1] for p in earlier) + 1 if earlier else 0
    final = root / (f"step-{state.step}" if generation == 0 else f"step-{state.step}.{generation}")
    tmp = root / f".tmp-{final.name}"
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
        os.rename(tmp, final)  # `final` is a new name: one atomic rename, nothing replaced
        _fsync_dir(root)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, exc, "checkpoint could not be written", then=resume_advice(root),
                          elsewhere=TRAIN_ELSEWHERE) from None
    for path in earlier:
        _retire(path, "old")
    return final


def _is_complete(folder: Path) -> bool:
    manifest = folder / MANIFEST
    try:
        info = json.loads(manifest.read_text())
        return all((folder / name).stat().st_size == size for name, size in info["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first, one per step (its newest complete save). Partial or damaged
    folders are left out."""
    newest: dict[int, Path] = {}
    for (step, _), path in _step_folders(root):
        if _is_complete(path):
            newest[step] = path  # sorted by generation: a later complete save wins
    return [newest[step] for step in sorted(newest)]


@dataclass
class Cleanup:
    """What `clean_partial` did."""

    removed: list[Path] = field(default_factory=list)
    recovered: list[Path] = field(default_factory=list)
    """Complete checkpoints a killed process had not yet renamed into place (or was deleting with no newer
    complete one to replace them), now under their `step-N` names."""


def clean_partial(root: Path) -> Cleanup:
    """Tidies what a killed save, prune or re-save left behind, never deleting the newest complete checkpoint.

    1. `.tmp-step-N[.G]` (a write in progress): renamed into place when complete, else removed.
    2. `.tmp-prune-*` / `.tmp-old-*` (a delete in progress): removed when a complete checkpoint at least
       as new exists, else renamed back when complete (it is then the newest), else removed.
    """
    cleanup = Cleanup()
    if not root.is_dir():
        return cleanup
    leftovers = sorted(child for child in root.iterdir() if child.name.startswith(".tmp-") and child.is_dir())
    writes = [p for p in leftovers if _parse_name(p.name.removeprefix(".tmp-"))]
    deletes = [p for p in leftovers if p not in writes]
    for path in writes:
        final = root / path.name.removeprefix(".tmp-")
        if _is_complete(path) and not final.exists():
            path.rename(final)
            cleanup.recovered.append(final)
        else:
            shutil.rmtree(path, ignore_errors=True)
            cleanup.removed.append(path)
    newest = max((_parse_name(p.name) for p in list_checkpoints(root)), default=None)
    for path in deletes:
        name = path.name.removeprefix(".tmp-").split("-", 1)[-1]  # `.tmp-prune-step-3` -> `step-3`
        key = _parse_name(name)
        final = root / name
        if key is not None and (newest is None or key > newest) and _is_complete(path) and not final.exists():
            path.rename(final)
            cleanup.recovered.append(final)
        else:
            shutil.rmtree(path, ignore_errors=True)
            cleanup.removed.append(path)
    return cleanup


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Keeps the newest `keep_last` complete checkpoints; deletes every older `step-*` folder (complete or
    not) and superseded saves of the kept steps. Folders newer than the newest complete one are left."""
    keep = list_checkpoints(root)[-keep_last:]
    if not keep:
        return
    newest = _parse_name(keep[-1].name)
    for key, path in _step_folders(root):
        if path not in keep and key[0] <= newest[0]:
            _retire(path, "prune")


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
