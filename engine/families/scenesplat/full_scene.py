"""Provides what SceneSplat's `lora3d eval` and `lora3d predict` share: scenes to run, score rows, budgets.

- `eval_dataset`: the data an evaluation runs on: the run's validation split (scene folders or the built-in
  rooms), another split of `data.root`, or a folder of scenes, with the validation transforms.
- `raw_sample`: a dataset's scene before any transform (every Gaussian), for full-scene evaluation.
- `score_function`: what each voxel's model output becomes: class probabilities (semseg: softmax) or
  zero-shot scores against a text-embedding table (lang: sigmoid of the cosine), plus raw cosine
  similarities to query embeddings.
- `settings_for`: the inference settings of one scene, its chunk size from the inference budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import DataError, ProfileError
from engine.families.base import Recipe
from engine.families.inference_budget import GIB, inference_budget
from engine.families.scenesplat.data import REQUIRED_FILES, SceneFolderDataset, build_sample, load_scene
from engine.families.scenesplat.datasets import SyntheticRoomDataset
from engine.families.scenesplat.scene_inference import InferenceSettings
from engine.families.scenesplat.transforms import build_transforms


@dataclass
class ScoreLayout:
    """What the columns of a score row mean.

    Attributes:
        class_names: one column per class first (probabilities or zero-shot scores).
        queries: then one column per query (cosine similarity), lang only.
        threshold: lang: a Gaussian whose best class score is below it stays unlabelled (-1).
    """

    class_names: list[str]
    queries: list[str]
    threshold: float | None = None

    def labels(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) int64 labels (-1: unlabelled) and (N,) float32 confidences from (N, K) score rows."""
        classes = scores[:, : len(self.class_names)]
        labels = classes.argmax(axis=1).astype(np.int64)
        confidence = classes.max(axis=1).astype(np.float32)
        if self.threshold is not None:
            labels[confidence < self.threshold] = -1
        return labels, confidence


def score_function(recipe: Recipe, queries: np.ndarray | None = None, query_names: Sequence[str] = (),
                   table: tuple[np.ndarray, list[str]] | None = None):
    """The voxel output -> score rows map of the recipe's task, and its layout.

    Args:
        recipe: semseg (softmax over the head's classes) or lang (zero-shot against the text table).
        queries: lang: (Q, D) query embeddings, scored as cosine similarity after the class columns.
        table: lang: (C, D) text embeddings and names replacing the recipe's zero-shot table.
    """
    task = recipe.task
    if recipe.options.task == "semseg":
        layout = ScoreLayout(list(task.class_names), [])
        return (lambda logits: torch.softmax(logits.float(), dim=1)), layout
    if table is None:
        text, names = task.text_table()
    else:
        text, names = torch.from_numpy(np.asarray(table[0], dtype=np.float32)), list(table[1])
    text = F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=1)
    query = None if queries is None else F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    layout = ScoreLayout(list(names), list(query_names), task.zero_shot_threshold)

    def score(feat: torch.Tensor) -> torch.Tensor:
        feat = F.normalize(feat.float(), dim=1)
        # SceneSplat's zero-shot labelling: sigmoid of the cosine, argmax, threshold (task.zero_shot_predict).
        columns = [torch.sigmoid(feat @ text.to(feat.device).T)]
        if query is not None:
            columns.append(feat @ query.to(feat.device).T)
        return torch.cat(columns, dim=1)

    return score, layout


class SceneListDataset(torch.utils.data.Dataset):
    """Scene folders given one by one, read as `SceneFolderDataset` reads a split (validation transforms)."""

    def __init__(self, folders: Sequence[Path], transforms: Any, label_key: str, seed: int) -> None:
        self.scenes = [Path(f) for f in folders]
        self.transforms = transforms
        self.label_key = label_key
        self.seed = seed

    def __len__(self) -> int:
        return len(self.scenes)

    def load(self, index: int) -> dict[str, Any]:
        folder = self.scenes[index]
        return build_sample(load_scene(folder), folder.name, self.label_key, folder=folder)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.transforms(self.load(index), rng=np.random.default_rng((self.seed, 0, index)))


def is_scene_folder(path: Path) -> bool:
    """A folder holding any of a scene's required `.npy` files (a complete one or not)."""
    return path.is_dir() and any((path / f"{name}.npy").is_file() for name in REQUIRED_FILES)


def eval_dataset(recipe: Recipe, split: str | None = None, scenes: Path | None = None) -> tuple[Any, str]:
    """The dataset `lora3d eval` runs on, with the validation transforms, and a line saying what it is.

    Args:
        split: a split folder of `data.root` (e.g. `test`) instead of the run's validation split.
        scenes: a scene folder or a folder of scene folders instead.

    Raises:
        ProfileError: no validation split and nothing else given, or `split` without a `data.root`.
        DataError: missing folders or scenes.
    """
    profile = recipe.profile
    data = profile.data
    transforms = build_transforms("val", grid_size=data.grid_size, point_budget=data.point_budget, augment=False)
    if scenes is not None:
        scenes = Path(scenes)
        if is_scene_folder(scenes):
            folders = [scenes]
        elif scenes.is_dir():
            folders = sorted(p for p in scenes.iterdir() if is_scene_folder(p))
        else:
            folders = []
        if not folders:
            raise DataError(
                f"{scenes}: no scene folders, got {'no such folder' if not scenes.exists() else 'none inside'}. "
                "Pass a scene folder (coord.npy, color.npy, ...) or a folder of them."
            )
        return SceneListDataset(folders, transforms, data.label_key, profile.train.seed), f"{len(folders)} scene(s) in {scenes}"
    if split is not None:
        if data.root is None:
            raise ProfileError(
                f"{recipe.source}: `--split {split}` needs a `data.root`, got the built-in synthetic rooms. "
                "Leave `--split` out (the validation rooms) or pass `--scenes FOLDER`."
            )
        dataset = SceneFolderDataset(data.root, split, transforms, label_key=data.label_key, seed=profile.train.seed)
        return dataset, f"split `{split}` of {data.root} ({len(dataset)} scenes)"
    _, val = recipe.family.build_datasets(recipe)
    if val is None or len(val) == 0:
        raise ProfileError(
            f"{recipe.source}: the profile has no validation split (`data.val_split` is empty or the split folder is "
            "missing), got none to evaluate on. Pass `--split NAME` or `--scenes FOLDER`."
        )
    if isinstance(val, SyntheticRoomDataset):
        return val, f"the built-in validation rooms ({len(val)}, domain {data.synthetic_domain})"
    return val, f"split `{data.val_split}` of {data.root} ({len(val)} scenes)"


def scene_count(dataset: Any) -> int:
    """Scenes of a dataset (without its `loop` repeats)."""
    return len(dataset.rooms) if isinstance(dataset, SyntheticRoomDataset) else len(dataset.scenes)


def raw_sample(dataset: Any, index: int) -> dict[str, Any]:
    """Scene `index` of a dataset as built from its files (or generated), before any transform."""
    if isinstance(dataset, SyntheticRoomDataset):
        return dataset.rooms[index]
    return dataset.load(index)


def settings_for(recipe: Recipe, device: torch.device, gaussians: int, fragments: bool = False, rotations: int = 1,
                 max_points: int | None = None, memory_gb: float | None = None) -> tuple[InferenceSettings, list[str]]:
    """The inference settings of a scene of `gaussians` Gaussians, and notes on how they were chosen.

    Without `max_points`, a forward pass takes as many voxels as the inference budget allows
    (`engine.families.inference_budget`: the device's memory, or `memory_gb`), so a larger scene runs in chunks.
    """
    if rotations < 1:
        raise ProfileError(f"`--rotations` must be at least 1, got {rotations}. Use 1 (no test-time rotation) or more.")
    notes = []
    if max_points is None:
        budget = inference_budget(recipe, device.type, int(memory_gb * GIB) if memory_gb else None, gaussians)
        if not budget.fits:
            raise ProfileError(
                f"{recipe.source}: {budget.notes[0]}, got `--memory-gb` {memory_gb}. Give more memory or use a smaller "
                "backbone."
            )
        max_points = budget.max_tokens if budget.max_tokens < gaussians else None
        if max_points is not None:
            notes.append(f"inference budget {budget.budget_bytes / GIB:.2f} GB on {device.type}: at most {max_points} "
                         f"voxels per forward pass (estimate {budget.estimate_bytes / GIB:.2f} GB with margin)")
    elif max_points < 64:
        raise ProfileError(f"`--max-points` must be at least 64, got {max_points}. Use the points a forward pass may take.")
    return InferenceSettings(recipe.profile.data.grid_size, max_points, fragments, rotations), notes


__all__ = ["ScoreLayout", "SceneListDataset", "eval_dataset", "is_scene_folder", "raw_sample", "scene_count",
           "score_function", "settings_for"]
