"""Provides the run's saved results: adapters (`adapter/`, `adapter-best/`) and full-model folders.

An adapter folder is staged whole beside its destination (whatever the family writes next to the
adapter, e.g. a segmentation head) and renamed into place, so a reader sees the old or the new folder,
never a mix. Checkpoints are `engine.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from engine.atomic import replace_folder
from engine.families.base import Family
from engine.write_errors import TRAIN_ELSEWHERE, write_error


def save_full_model(model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
    """`lora.method: full` has no adapter: the folder holds every weight (`model.safetensors`) and the metadata."""
    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "lora3d_metadata.json").write_text(json.dumps({**metadata, "method": "full"}, indent=2))


def save_adapter(model: nn.Module, folder: Path, family: Family, method: str, metadata: dict[str, Any],
                 then: str = "") -> None:
    """Writes the adapter (or, for `full`, the whole model) to `folder`, replacing it atomically.

    Raises:
        CheckpointError: a write failed (full disk, read-only folder); nothing partial is left and an
            older `folder` is unchanged. `then` says what to do once the disk is fixed.
    """
    try:
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as staging:
            staged = Path(staging) / folder.name
            if method == "full":
                save_full_model(model, staged, metadata)
            else:
                family.save_adapter(model, staged, metadata)
            replace_folder(staged, folder)
    except (OSError, SafetensorError) as exc:
        raise write_error(folder, exc, "adapter could not be written", then=then, elsewhere=TRAIN_ELSEWHERE) from None


def tidy_adapter_leftovers(run_dir: Path) -> list[Path]:
    """Removes the hidden staging folders (`.adapter.*`, `.adapter-best.*`) a killed adapter write left.

    A kill between moving the old folder aside and moving the new one in leaves no `adapter/`: then the old
    complete folder (`.<name>.*.old/<name>`) is moved back, and returned.
    """
    restored = []
    for name in ("adapter", "adapter-best"):
        leftovers = sorted(run_dir.glob(f".{name}.*"))
        dest = run_dir / name
        for old in (p for p in leftovers if p.name.endswith(".old")):
            if not dest.exists() and (old / name).is_dir():
                os.replace(old / name, dest)
                restored.append(dest)
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    return restored
