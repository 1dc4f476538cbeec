"""Provides SceneSplat's `lora3d predict`: per-Gaussian labels of new scenes, a recoloured 3DGS `.ply`, renders.

Input (`--scene`): a scene folder, a folder of scene folders and/or INRIA 3DGS `.ply` files, or one `.ply`;
or (`--split`) a split of the run's own data, the built-in rooms included. Every
input is checked before anything is written (a `.ply` that is not 3DGS or a scene missing arrays stops
the command with exit 2 and an untouched output folder). For each scene and each model (`--adapter`s on
one base, `--base` for the base alone), `OUT/<scene>/<model>/` appears complete or not at all:

| file | content |
|---|---|
| `labels.npy` | (N,) int64 class per Gaussian in input order (lang: zero-shot, -1 below the threshold) |
| `confidence.npy` | (N,) float32: the winning class's softmax probability (lang: its sigmoid score) |
| `labels.ply` | the input's Gaussians coloured by class (3DGS layout, opens in splat viewers) |
| `labels.png` | top-down and oblique renders with the class legend |
| `query-<text>.npy` | lang, per `--query`: (N,) float32 cosine similarity to the query's text embedding |
| `query-<text>.ply`, `.png` | the same as a heat colouring |
| `prediction.json` | classes, colours and counts, the query ranges, how the scene ran, notes |

Queries need text embeddings computed elsewhere (no network at run time): a `.npy` [C, D] with a `.json`
`{"class_names": [...]}` beside it (docs/scenesplat.md shows how to make one with SigLIP2).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from engine.atomic import atomic_folder
from engine.errors import DataError, ProfileError
from engine.families.evaluation import adapter_names, autocast, load_models, load_source, pick_device
from engine.families.scenesplat.data import (
    REQUIRED_FILES,
    SceneFolderDataset,
    build_sample,
    load_scene,
    load_text_embeddings,
)
from engine.families.scenesplat.evaluate import load_scenesplat_adapter
from engine.families.scenesplat.full_scene import (
    ScoreLayout,
    is_scene_folder,
    raw_sample,
    scene_count,
    score_function,
    settings_for,
)
from engine.families.scenesplat.ply_export import recolour_ply, write_3dgs_ply
from engine.families.scenesplat.ply_import import _read_vertices, convert_3dgs_vertices
from engine.families.scenesplat.scene_inference import SceneScores, predict_scene
from engine.lora.switch import BASE
from engine.render import class_colors, compose_figure, heat_colors, label_colors, render_points, write_png

RENDER_SIZE = 512
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneInput:
    """One scene to predict: a scene folder, a 3DGS `.ply`, or scene `index` of a run's split (`dataset`)."""

    name: str
    path: Path | None
    dataset: Any = None
    index: int = 0

    @property
    def is_ply(self) -> bool:
        return self.path is not None and self.path.suffix.lower() == ".ply"


def split_scenes(recipe: Any, split: str) -> list[SceneInput]:
    """The scenes of a split of the run's data: `data.root/<split>`, or the built-in rooms (`train`, `val`).

    Raises:
        ProfileError: a split the built-in rooms do not have, or one without scenes.
        DataError: a missing split folder.
    """
    data = recipe.profile.data
    if data.root is not None:
        dataset = SceneFolderDataset(data.root, split, label_key=data.label_key)
    elif split in ("train", "val"):
        train, val = recipe.family.build_datasets(recipe)
        dataset = train if split == "train" else val
    else:
        raise ProfileError(f"{recipe.source}: the built-in rooms have the splits `train` and `val`, got `--split {split}`. "
                           "Use one of them, or `--scene PATH`.")
    if dataset is None or scene_count(dataset) == 0:
        raise ProfileError(f"{recipe.source}: split `{split}` has no scenes, got none. Use another split or `--scene PATH`.")
    return [SceneInput(str(raw_sample(dataset, i)["name"]), None, dataset, i) for i in range(scene_count(dataset))]


def find_scenes(path: Path) -> list[SceneInput]:
    """The scenes at `path`, each checked enough that reading it later cannot fail on its format.

    Raises:
        DataError: nothing to predict, a `.ply` that is not an INRIA 3DGS file, or a scene folder missing
            required arrays (the message names the file or folder).
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".ply":
        found = [SceneInput(path.stem, path)]
    elif is_scene_folder(path):
        found = [SceneInput(path.name, path)]
    elif path.is_dir():
        entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
        found = [SceneInput(p.stem if p.is_file() else p.name, p) for p in entries
                 if (p.is_file() and p.suffix.lower() == ".ply") or is_scene_folder(p)]
        other = [p.name for p in entries if p not in {s.path for s in found}]
        if found and other:
            _log.warning("%s: skipped %d entries that are neither a .ply nor a scene folder: %s", path, len(other),
                         ", ".join(other[:8]) + (" ..." if len(other) > 8 else ""))
    else:
        found = []
    if not found:
        what = "no such file or folder" if not path.exists() else "no .ply file or scene folder"
        raise DataError(f"{path}: nothing to predict, got {what}. Pass a scene folder, a 3DGS .ply, or a folder of them.")
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{path}: two scenes share the name(s) {twice!r}, got a .ply and a folder of one name. "
                        "Rename one: outputs go to OUT/<scene name>/.")
    for scene in found:
        if scene.is_ply:
            _read_vertices(scene.path)  # the header and the 3DGS properties (the vertex data is memory-mapped)
        else:
            missing = [f"{n}.npy" for n in REQUIRED_FILES if not (scene.path / f"{n}.npy").is_file()]
            if missing:
                raise DataError(
                    f"{scene.path}: scene folder is missing {', '.join(missing)}, got "
                    f"{sorted(p.name for p in scene.path.iterdir())!r}. A scene needs "
                    f"{', '.join(n + '.npy' for n in REQUIRED_FILES)}; import a 3DGS .ply with `lora3d import-3dgs`."
                )
    return found


def read_scene(scene: SceneInput) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """The built sample of a scene, and the arrays a new `.ply` is written from (None: recolour the input `.ply`)."""
    if scene.dataset is not None:
        sample = raw_sample(scene.dataset, scene.index)
        return sample, sample
    if scene.is_ply:
        arrays = convert_3dgs_vertices(_read_vertices(scene.path), scene.path)
        return build_sample(arrays, scene.name, folder=scene.path), None
    arrays = load_scene(scene.path)
    return build_sample(arrays, scene.name, folder=scene.path), arrays


def load_queries(path: Path, queries: list[str], width: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The embeddings file's table and names, and the rows of `queries` (matched case-insensitively).

    Raises:
        DataError: unreadable file, rows of another width than the model's output, or a query with no row.
    """
    table, names = load_text_embeddings(path)
    if table.shape[1] != width:
        raise DataError(
            f"{path}: text embeddings must be {width}-d (the model's feature width), got {table.shape[1]}-d rows "
            f"{tuple(table.shape)}. Encode the labels with the text model the language features came from "
            "(SceneSplat: SigLIP2, 768-d)."
        )
    lookup = {n.lower(): i for i, n in enumerate(names)}
    missing = [q for q in queries if q.lower() not in lookup]
    if missing:
        raise DataError(
            f"{path}: no embedding for the query {missing[0]!r}, got class names {names[:12]!r}. Encode the query "
            f"text and add it as a row (and to the .json's class_names)."
        )
    return table, names, table[[lookup[q.lower()] for q in queries]] if queries else np.zeros((0, width), np.float32)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "query"


def _write_ply(folder: Path, name: str, scene: SceneInput, arrays: dict[str, np.ndarray] | None, rgb: np.ndarray) -> None:
    if scene.is_ply:
        recolour_ply(scene.path, folder / f"{name}.ply", rgb)
    else:
        write_3dgs_ply(folder / f"{name}.ply", arrays, rgb)


def _render(folder: Path, name: str, coord: np.ndarray, rgb: np.ndarray, title: str, **legend: Any) -> None:
    # About half the mean spacing of the points seen from above: sparse scenes stay readable, dense ones sharp.
    point_px = int(np.clip(0.6 * RENDER_SIZE / np.sqrt(max(len(coord), 1)), 1, 4))
    panels = [(caption, render_points(coord, rgb, view, RENDER_SIZE, point_px))
              for caption, view in (("top-down", "top"), ("oblique", "oblique"))]
    write_png(compose_figure(panels, title, **legend), folder / f"{name}.png")


def write_outputs(folder: Path, scene: SceneInput, arrays: dict[str, np.ndarray] | None, coord: np.ndarray,
                  result: SceneScores, layout: ScoreLayout, record: dict[str, Any], render: bool) -> dict[str, Any]:
    """Writes one scene's prediction by one model into `folder` (atomically); returns its `prediction.json`."""
    labels, confidence = layout.labels(result.scores)
    c = len(layout.class_names)
    colors = class_colors(c)
    counts = np.bincount(labels[labels >= 0], minlength=c)
    record = {
        **record,
        "gaussians": len(labels),
        "unlabelled": int((labels < 0).sum()),
        "classes": [{"id": i, "name": n, "color": colors[i].tolist(), "count": int(counts[i])}
                    for i, n in enumerate(layout.class_names)],
        "voxels": result.voxels, "passes": result.passes, "forwards": result.forwards,
        "max_points_per_forward": result.max_chunk,
        "queries": [],
    }
    with atomic_folder(folder) as tmp:
        np.save(tmp / "labels.npy", labels, allow_pickle=False)
        np.save(tmp / "confidence.npy", confidence, allow_pickle=False)
        rgb = label_colors(labels, c)
        _write_ply(tmp, "labels", scene, arrays, rgb)
        if render:
            legend = [(n, colors[i]) for i, n in enumerate(layout.class_names) if counts[i]]
            if record["unlabelled"]:
                legend.append(("unlabelled", (170, 170, 170)))
            _render(tmp, "labels", coord, rgb, f"{scene.name}: {record['model']} labels", legend=legend)
        for q, query in enumerate(layout.queries):
            similarity = result.scores[:, c + q].astype(np.float32)
            low, high = (float(v) for v in np.percentile(similarity, [2.0, 99.9]))
            slug = f"query-{_slug(query)}"
            np.save(tmp / f"{slug}.npy", similarity, allow_pickle=False)
            heat = heat_colors(similarity, low, high)
            _write_ply(tmp, slug, scene, arrays, heat)
            if render:
                _render(tmp, slug, coord, heat, f"{scene.name}: {record['model']}, similarity to {query!r}",
                        colorbar=(low, high, "cosine similarity"))
            record["queries"].append({"text": query, "file": f"{slug}.npy", "min": float(similarity.min()),
                                      "max": float(similarity.max()), "color_range": [low, high]})
        (tmp / "prediction.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_predict(args: argparse.Namespace, console: Console | None = None) -> list[dict[str, Any]]:
    """`lora3d predict` for a scenesplat run (see `predict_arguments` in commands.py); returns the records."""
    console = console or Console(highlight=False, soft_wrap=True)
    source = load_source(args.run_dir)
    recipe = source.recipe
    options = recipe.options
    queries = list(args.query or [])
    if queries and options.task != "lang":
        raise ProfileError(
            f"{recipe.source}: `--query` needs a language model (`model.task: lang`), got a {options.task} run. "
            "Query a run trained with the lang task."
        )
    scenes = find_scenes(Path(args.scene)) if args.scene else split_scenes(recipe, args.split)
    table = None
    embeddings = Path(args.embeddings) if args.embeddings else options.text_embeddings
    notes = list(source.notes)
    if options.task == "lang":
        if queries and embeddings is None:
            raise ProfileError(
                f"{recipe.source}: `--query` needs text embeddings, got no `--embeddings` and no "
                "`model.text_embeddings`. Pass `--embeddings FILE.npy` (docs/scenesplat.md: the file format)."
            )
        if embeddings is not None:
            full, names, rows = load_queries(embeddings, queries, options.output_width)
            table = (full, names)
        else:
            rows = None
            notes.append("no text embeddings given: zero-shot labels use the built-in synthetic table")
    else:
        rows = None
    device = pick_device(args.device)
    paths = [Path(a) for a in args.adapter] if args.adapter else list(source.adapters)
    models = load_models(recipe, paths, device, load_scenesplat_adapter)
    notes += models.notes
    variants = ([BASE] if args.base or not paths else []) + adapter_names(paths)
    if not paths and not args.base:
        notes.append("no adapter: predicting with the base alone")
    score, layout = score_function(recipe, rows, queries, table)
    out = Path(args.out)
    records = []
    for scene in scenes:
        start = time.perf_counter()
        sample, arrays = read_scene(scene)
        settings, budget_notes = settings_for(recipe, device, len(sample["coord"]), args.fragments, args.rotations,
                                              args.max_points, args.memory_gb)
        for name in variants:
            model = models.adapters.use(name)
            result = predict_scene(model, sample, score, settings, device, autocast(recipe, device))
            where = str(scene.path) if scene.path else f"split `{args.split}` of {recipe.source}"
            record = {"scene": scene.name, "input": where, "model": name,
                      "adapter": str(models.adapters.paths[name]) if models.adapters.paths[name] else None,
                      "task": options.task, "profile": recipe.source, "device": str(device),
                      "grid_size": settings.grid_size, "max_points": settings.max_points,
                      "fragments": settings.fragments, "rotations": settings.rotations,
                      "notes": notes + budget_notes + result.notes}
            record = write_outputs(out / scene.name / name, scene, arrays, sample["coord"], result, layout, record,
                                   not args.no_render)
            records.append(record)
            console.print(f"{escape(scene.name)} / {escape(name)}: {record['gaussians']} Gaussians, {result.voxels} "
                          f"voxels, {result.forwards} forward pass(es) -> {escape(str(out / scene.name / name))} "
                          f"({time.perf_counter() - start:.1f} s)")
    for note in dict.fromkeys(n for r in records for n in r["notes"]):
        console.print(f"  note: {escape(note)}")
    return records


def cmd_predict(args: argparse.Namespace) -> int:
    """`lora3d predict RUN_DIR --scene PATH --out DIR [...]`."""
    run_predict(args)
    return 0


__all__ = ["SceneInput", "cmd_predict", "find_scenes", "load_queries", "read_scene", "run_predict", "split_scenes",
           "write_outputs"]
