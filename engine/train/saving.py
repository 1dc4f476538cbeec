"""Provides the run's saved results: adapters (`adapter/`, `adapter-best/`) and full-model folders.

An adapter folder is staged whole beside its destination (whatever the family writes next to the
adapter, e.g. a segmentation head) and renamed into place, so a reader sees the old or the new folder,
never a mix. Checkpoints are `engine.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from engine.atomic import replace_folder
from engine.errors import CheckpointError
from engine.families.base import Family


def save_full_model(model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
    """`lora.method: full` has no adapter: the folder holds every weight (`model.safetensors`) and the metadata."""
    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "lora3d_metadata.json").write_text(json.dumps({**metadata, "method": "full"}, indent=2))


def save_adapter(model: nn.Module, folder: Path, family: Family, method: str, metadata: dict[str, Any]) -> None:
    """Writes the adapter (or, for `full`, the whole model) to `folder`, replacing it atomically."""
    try:
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as staging:
            staged = Path(staging) / folder.name
            if method == "full":
                save_full_model(model, staged, metadata)
            else:
                family.save_adapter(model, staged, metadata)
            replace_folder(staged, folder)
    except OSError as exc:
        raise CheckpointError(
            f"{folder}: adapter could not be written ({exc.strerror or exc}). Free disk space and rerun with --resume."
        ) from None
