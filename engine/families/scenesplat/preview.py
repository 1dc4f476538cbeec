"""Provides SceneSplat's pictures: ground truth vs predicted labels during training, and one scene before it.

- `preview_items`: the first `previews.items` scenes of the validation split (of the training split without one).
- `draw_preview`: every Gaussian of the scene labelled by the model as `lora3d predict` labels it (full-scene
  inference, `scene_inference.predict_scene`; lang: the zero-shot labels against the text table), rendered as
  coloured splats from above and from an oblique camera beside the ground truth, with the class legend and
  the scene's accuracy in the title.
- `draw_data_preview`: one training scene as the model reads it: its colours beside its labels, with the legend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from engine.families.base import PreviewFiles, PreviewItem, Recipe, first_preview_items
from engine.families.scenesplat.full_scene import raw_sample, scene_count, score_function, settings_for
from engine.families.scenesplat.scene_inference import predict_scene
from engine.render import UNLABELLED_RGB, class_colors, compose_figure, label_colors, render_points, write_png

PANEL_PX = 256
"""Side of one view, pixels: two columns of two views stay readable when a terminal shrinks the picture."""
MAX_RENDER_POINTS = 200_000
"""Points drawn per view; a larger scene is drawn from a fixed random subset (the labels are of every Gaussian)."""


def _scene_name(dataset: Any, index: int) -> str:
    if hasattr(dataset, "rooms"):
        return str(dataset.rooms[index]["name"])
    return Path(dataset.scenes[index]).name


def preview_items(recipe: Recipe, train_ds: Any, val_ds: Any) -> list[PreviewItem]:
    """The first `previews.items` scenes (not their `data.loop` repeats) of the validation split."""
    items = first_preview_items(train_ds, val_ds, recipe.profile.previews.items, _scene_name)
    return [item for item in items if item.index < scene_count(item.dataset)]


def _views(coord: np.ndarray, rgb: np.ndarray, seed: int) -> np.ndarray:
    """(2 * PANEL_PX, PANEL_PX, 3) uint8: the top-down view above the oblique one."""
    if len(coord) > MAX_RENDER_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(coord), MAX_RENDER_POINTS, replace=False))
        coord, rgb = coord[keep], rgb[keep]
    # About half the mean spacing of the points seen from above, as `lora3d predict` draws them.
    point_px = int(np.clip(0.6 * PANEL_PX / np.sqrt(max(len(coord), 1)), 1, 4))
    return np.concatenate([render_points(coord, rgb, view, PANEL_PX, point_px) for view in ("top", "oblique")])


def _legend(names: list[str], *label_sets: np.ndarray) -> list[tuple[str, Any]]:
    """Swatches of the classes present in any of the label sets, then `unlabelled` when some point has none."""
    colors = class_colors(len(names))
    present = set()
    unlabelled = False
    for labels in label_sets:
        present |= {int(v) for v in np.unique(labels) if 0 <= v < len(names)}
        unlabelled |= bool(((labels < 0) | (labels >= len(names))).any())
    legend = [(names[i], colors[i]) for i in sorted(present)]
    return legend + ([("unlabelled", UNLABELLED_RGB)] if unlabelled else [])


def draw_preview(recipe: Recipe, model: nn.Module, item: PreviewItem, folder: Path, seed: int,
                 step: int) -> PreviewFiles:
    """Writes `<item>.png`: ground truth and predicted labels of every Gaussian, top-down and oblique."""
    sample = raw_sample(item.dataset, item.index)
    score, layout = score_function(recipe)
    device = next(model.parameters()).device
    settings, _ = settings_for(recipe, device, len(sample["coord"]))
    result = predict_scene(model, sample, score, settings, device)
    predicted, _ = layout.labels(result.scores)
    what = "zero-shot labels" if recipe.profile.model.task == "lang" else "labels"
    return write_labels_preview(folder / f"{item.name}.png", f"{item.name}: {what} at step {step}", sample["coord"],
                                sample["segment"], predicted, layout.class_names, seed)


def write_labels_preview(path: Path, title: str, coord: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
                         class_names: list[str], seed: int) -> PreviewFiles:
    """Writes ground truth beside prediction (top-down above oblique) with the legend; the title gains the accuracy.

    Args:
        coord: (N, 3) positions, z up.
        truth, predicted: (N,) class ids; outside [0, len(class_names)) draws as unlabelled.
    """
    truth = np.asarray(truth).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    coord = np.asarray(coord, dtype=np.float64)
    c = len(class_names)
    labelled = (truth >= 0) & (truth < c)
    if labelled.any():
        title += f" (accuracy {float((predicted[labelled] == truth[labelled]).mean()):.1%})"
    panels = [("ground truth (top / oblique)", _views(coord, label_colors(truth, c), seed)),
              ("prediction (top / oblique)", _views(coord, label_colors(predicted, c), seed))]
    figure = compose_figure(panels, title, legend=_legend(list(class_names), truth, predicted))
    return PreviewFiles(write_png(figure, path))


def _colors(sample: dict[str, Any]) -> np.ndarray:
    """(N, 3) uint8 of the Gaussians' colours (stored in [-1, 1])."""
    color = np.asarray(sample["color"], dtype=np.float32).reshape(-1, 3)
    return np.clip((color + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def draw_data_preview(recipe: Recipe, folder: Path) -> list[Path]:
    """Writes the first training scene's colours and labels (top-down and oblique); returns the PNG."""
    train, _ = recipe.family.build_datasets(recipe)
    sample = raw_sample(train, 0)
    name = str(sample.get("name") or "scene")
    coord = np.asarray(sample["coord"], dtype=np.float64)
    truth = np.asarray(sample["segment"]).reshape(-1)
    names = list(recipe.options.class_names or [])
    if not names and recipe.profile.model.task == "lang":
        names = list(recipe.task.text_table()[1])
    c = max(len(names), int(truth.max()) + 1 if len(truth) else 0)
    names += [f"class {i}" for i in range(len(names), c)]
    panels = [("colours (top / oblique)", _views(coord, _colors(sample), 0)),
              ("labels (top / oblique)", _views(coord, label_colors(truth, c), 0))]
    title = f"{name}: {len(coord):,} Gaussians as read for training (labels: {recipe.profile.data.label_key})"
    figure = compose_figure(panels, title, legend=_legend(names, truth))
    return [write_png(figure, Path(folder) / f"{name}.png")]

