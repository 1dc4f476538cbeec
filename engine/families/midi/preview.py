"""Provides MIDI's pictures: generated scenes during training, and one prepared scene before it.

- `preview_items`: the first `previews.items` validation scenes (training scenes without a validation split).
- `draw_preview`: the scene generated from its image and id map with `previews.sampling_steps` steps (CFG and
  mesh grid as the Chamfer evaluation: `data.eval_guidance_scale`, `data.eval_octree_resolution`), the noise
  seeded by `previews.seed` and the item, written as `<item>.glb` (one named mesh per instance) and drawn by
  the software rasteriser: the input image, the ground truth (the frozen VAE's mesh of the ground-truth
  latents, so it shows what the DiT can reach; extracted and drawn once per run, in the item's cache) and the
  prediction from the same camera, then a turntable of the prediction.
- `draw_data_preview`: one training scene as prepared: its image, its instance id map and every instance's
  surface points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from PIL import Image
from torch import nn

from engine.errors import DataError
from engine.families.base import PreviewFiles, PreviewItem, Recipe, first_preview_items
from engine.families.midi.inference import write_scene
from engine.families.midi.render import instance_colors, render_scene
from engine.families.midi.scene_data import load_prepared_scene
from engine.families.midi.task import batch_conditions, batch_posterior, frozen_parts, generate_latents
from engine.models.dit.mesh import extract_mesh
from engine.render import compose_figure, render_points, write_png

PANEL_PX = 200
"""Side of one view, pixels."""
TURNTABLE_DEG = (90.0, 180.0, 270.0)
"""Azimuths of the turntable views beside the prediction's first view (0 degrees)."""
ELEVATION_DEG = 20.0


def preview_items(recipe: Recipe, train_ds: Any, val_ds: Any) -> list[PreviewItem]:
    if recipe.profile.model.task != "flow":
        return []  # the VAE pretraining task generates no scenes
    return first_preview_items(train_ds, val_ds, recipe.profile.previews.items, lambda ds, i: ds.scenes[i].name)


def _image(array: np.ndarray) -> np.ndarray:
    """(PANEL_PX, PANEL_PX, 3) uint8 of an image (nearest neighbour keeps an id map's colours exact)."""
    return np.asarray(Image.fromarray(array).convert("RGB").resize((PANEL_PX, PANEL_PX), Image.Resampling.NEAREST))


def _id_colors(id_map: np.ndarray, count: int) -> np.ndarray:
    """(H, W, 3) uint8: instance i + 1 in its rasteriser colour, background white."""
    palette = np.vstack([[1.0, 1.0, 1.0], instance_colors(count)])
    return (palette[np.clip(id_map, 0, count)] * 255).round().astype(np.uint8)


def _stack(rows: list[Image.Image]) -> Image.Image:
    width = max(r.width for r in rows)
    figure = Image.new("RGB", (width, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        figure.paste(row, (0, y))
        y += row.height
    return figure


def _mesh_arrays(meshes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All instances as one mesh for TensorBoard: vertices (V, 3), faces (F, 3), vertex colours (V, 3) uint8."""
    colors = (instance_colors(len(meshes)) * 255).round().astype(np.uint8)
    vertices, faces, rgb, offset = [], [], [], 0
    for mesh, color in zip(meshes, colors):
        if len(mesh.faces) == 0:
            continue
        vertices.append(np.asarray(mesh.vertices, np.float32))
        faces.append(np.asarray(mesh.faces, np.int32) + offset)
        rgb.append(np.repeat(color[None], len(mesh.vertices), axis=0))
        offset += len(mesh.vertices)
    if not vertices:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8)
    return np.concatenate(vertices), np.concatenate(faces), np.concatenate(rgb)


def draw_preview(recipe: Recipe, model: nn.Module, item: PreviewItem, folder: Path, seed: int,
                 step: int) -> PreviewFiles:
    """Generates the item's scene; writes `<item>.glb` (when a surface was found) and `<item>.png`."""
    profile = recipe.profile
    data, previews = profile.data, profile.previews
    dataset = item.dataset
    device = next(model.parameters()).device
    batch = send_to_device(recipe.family.collate([dataset[item.index]]), device)
    real = int(batch["num_instances"][0])
    clip, dino = batch_conditions(model, batch)
    rows = slice(0, real)  # the first `real` slots are the scene's own instances, the rest padding
    generator = torch.Generator().manual_seed(seed * 1_000_003 + item.index)
    latents = generate_latents(model, clip[rows] if clip is not None else None, dino[rows], profile.model.num_tokens,
                               previews.sampling_steps, data.eval_guidance_scale, generator)
    vae = frozen_parts(model).vae
    vae_dtype = next(vae.parameters()).dtype
    meshes = extract_mesh(vae, latents.to(vae_dtype), octree_resolution=data.eval_octree_resolution)
    found = sum(len(m.faces) > 0 for m in meshes)
    glb = None
    if found:
        glb = write_scene(meshes, [f"instance_{i:03d}" for i in range(real)], folder / f"{item.name}.glb")
    if not item.cache:  # the VAE is frozen: the ground truth and its panels are the same every round
        mean, _ = batch_posterior(model, batch, profile.model.num_tokens)
        truth = extract_mesh(vae, mean[rows].to(vae_dtype), octree_resolution=data.eval_octree_resolution)
        # One camera distance for every view, fitted to the ground truth, so sizes compare across panels and steps.
        radius = max((float(np.linalg.norm(m.vertices, axis=1).max()) for m in truth if len(m.faces)), default=1.0)
        item.cache["distance"] = radius / np.sin(np.radians(20.0)) * 1.05
        item.cache["image"] = _image(load_prepared_scene(dataset.scenes[item.index].folder).image)
        item.cache["truth"] = render_scene(truth, PANEL_PX, ELEVATION_DEG, 0.0, distance=item.cache["distance"])[0]

    def view(shapes: list, azimuth: float) -> np.ndarray:
        return render_scene(shapes, PANEL_PX, ELEVATION_DEG, azimuth, distance=item.cache["distance"])[0]

    title = (f"{item.name}: step {step}, {previews.sampling_steps} sampling steps, seed {seed} "
             f"({found} of {real} instances have a surface)")
    first = compose_figure([("input image", item.cache["image"]), ("ground truth (VAE mesh)", item.cache["truth"]),
                            ("prediction", view(meshes, 0.0))], title)
    turntable = compose_figure([(f"prediction, {a:g} deg", view(meshes, a)) for a in TURNTABLE_DEG], "turntable")
    png = write_png(_stack([first, turntable]), folder / f"{item.name}.png")
    return PreviewFiles(png, glb, _mesh_arrays(meshes))


def draw_data_preview(recipe: Recipe, folder: Path) -> list[Path]:
    """Writes the first training scene's image, id map and instance points side by side; returns the PNG."""
    train, _ = recipe.family.scene_folders(recipe)
    if not train:
        raise DataError(f"{recipe.profile.data.root}: no training scene to preview, got none. Prepare scenes first.")
    scene = load_prepared_scene(train[0])
    count = scene.num_instances
    colors = (instance_colors(count) * 255).round().astype(np.uint8)
    points = np.concatenate(scene.surface_points)  # (sum N, 3), y up
    rgb = np.concatenate([np.repeat(colors[i][None], len(p), axis=0) for i, p in enumerate(scene.surface_points)])
    z_up = points[:, [0, 2, 1]] * np.array([1.0, -1.0, 1.0])  # the point renderer's scenes are z-up
    point_px = int(np.clip(0.6 * PANEL_PX / np.sqrt(max(len(points), 1)) * 4, 1, 3))
    panels = [("image", _image(scene.image)), ("instance id map", _image(_id_colors(scene.id_map, count))),
              ("instances' surface points", render_points(z_up, rgb, "oblique", PANEL_PX, point_px))]
    legend = [(name, colors[i]) for i, name in enumerate(scene.instance_names)]
    title = f"{scene.name}: {count} instances, {len(scene.surface_points[0]):,} points each, as prepared"
    figure = compose_figure(panels, title, legend=legend)
    return [write_png(figure, Path(folder) / f"{scene.name}.png")]


__all__ = ["draw_data_preview", "draw_preview", "preview_items"]
