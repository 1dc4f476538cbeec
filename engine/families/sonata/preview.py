"""Provides Sonata's pictures, drawn as SceneSplat's (engine.families.scenesplat.preview): ground truth vs prediction.

The model sees a validation scene as its validation transforms give it (grid-sampled points); the picture shows
those points' ground truth beside their predicted labels, from above and obliquely, with the class legend.
The items and the data preview are SceneSplat's: the synthetic rooms and scene folders index alike.
"""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import send_to_device
from torch import nn

from engine.families.base import PreviewFiles, PreviewItem, Recipe
from engine.families.scenesplat.preview import draw_data_preview, preview_items, write_labels_preview
from engine.families.scenesplat.task import model_inputs


def draw_preview(recipe: Recipe, model: nn.Module, item: PreviewItem, folder: Path, seed: int,
                 step: int) -> PreviewFiles:
    """Writes `<item>.png`: the validation points' ground truth and predicted labels."""
    device = next(model.parameters()).device
    batch = send_to_device(recipe.family.collate([item.dataset[item.index]]), device)
    predicted = model(model_inputs(batch)).argmax(1).cpu().numpy()  # (N,) from (N, C) logits
    return write_labels_preview(folder / f"{item.name}.png", f"{item.name}: labels at step {step}",
                                batch["coord"].cpu().numpy(), batch["segment"].cpu().numpy(), predicted,
                                list(recipe.task.class_names), seed)


__all__ = ["draw_data_preview", "draw_preview", "preview_items"]
