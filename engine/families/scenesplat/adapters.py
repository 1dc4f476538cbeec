"""Provides SceneSplat adapter I/O: the LoRA adapter plus the trained segmentation head, and multi-task views.

NOTE: the segmentation head stays trainable next to the LoRA weights (`model.train_head`, on by default):
a new dataset brings new classes, so a frozen head from the base would be useless. The head is saved next
to the adapter as `seg_head.safetensors` and loaded by `load_adapter`. The language task has no head: its
output is the backbone's normalised feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import CheckpointError
from engine.lora import load_lora_checkpoint, save_lora_checkpoint
from engine.lora.adapter_io import check_finite
from engine.models.ptv3 import PTv3LanguageModel, PTv3Segmentor

HEAD_FILE = "seg_head.safetensors"
"""The trainable segmentation head, saved next to the adapter."""


def save_adapter(model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
    """The LoRA adapter in PEFT layout, plus `seg_head.safetensors` when the head trained."""
    save_lora_checkpoint(model, folder, metadata=metadata)
    head = getattr(model, "seg_head", None)
    if isinstance(head, nn.Linear) and any(p.requires_grad for p in head.parameters()):
        tensors = {f"seg_head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(tensors, str(Path(folder) / HEAD_FILE), metadata={"format": "pt"})


def load_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Loads an adapter written by a scenesplat run (LoRA + its `seg_head.safetensors` when present).

    Args:
        model: the base model (`SceneSplatFamily.build_model`), with or without other adapters.
        folder: the run's `adapter/` folder (or any PEFT adapter folder / .safetensors file).
        adapter_name: the name to load it under; it becomes the active adapter.

    Returns:
        The same model.
    """
    folder = Path(folder)
    load_lora_checkpoint(model, folder, adapter_name=adapter_name)
    head_file = folder / HEAD_FILE if folder.is_dir() else None
    if head_file is not None and head_file.is_file():
        head = load_file(str(head_file))
        check_finite(head, head_file)  # a diverged head would poison every prediction (and a merged checkpoint)
        if not isinstance(getattr(model, "seg_head", None), nn.Linear):
            raise CheckpointError(
                f"{folder}: the adapter has a segmentation head but the model has none, got "
                f"{type(model).__name__}. Build the model with `model.task: semseg`."
            )
        shapes = {k: tuple(v.shape) for k, v in model.seg_head.state_dict().items()}
        got = {k.removeprefix("seg_head."): tuple(v.shape) for k, v in head.items()}
        if shapes != got:
            raise CheckpointError(
                f"{folder / HEAD_FILE}: head shapes differ from the model's, got {got!r} vs {shapes!r}. "
                "Set `model.num_classes` to the value the adapter was trained with."
            )
        model.seg_head.load_state_dict({k.removeprefix("seg_head."): v for k, v in head.items()})
    return model


def language_view(model: PTv3Segmentor) -> PTv3LanguageModel:
    """A language model over `model`'s own backbone object, sharing its adapter registry.

    Multi-task inference on one base: load the `semseg` adapter into the segmentor and the `lang`
    adapter into this view; both then live in the same LoRA layers, and `set_active_adapter` on either
    model picks which one runs. (A lang adapter cannot go into the segmentor directly: its recorded
    base architecture has no `seg_head`.)
    """
    if not hasattr(model, "peft_config"):
        model.peft_config = {}
    view = PTv3LanguageModel(model.backbone)
    # NOTE: one registry, so PEFT keeps each adapter's tensors apart when saving or loading either model.
    view.peft_config = model.peft_config
    return view
