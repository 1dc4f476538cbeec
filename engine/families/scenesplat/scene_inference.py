"""Provides full-scene inference for SceneSplat models: a score row for every Gaussian of a scene, in bounded memory.

The model sees voxels, as in training; every Gaussian gets the scores of the voxel it falls in, as
Pointcept's tester carries predictions back through the grid-sampling inverse
(Pointcept@d74c646:pointcept/engines/test.py, SemSegTester; reference ptv3.md §2.4, §2.7):

1. The scene is centred as the validation transforms centre it (`CenterShift(apply_z=True)`).
2. Views: `rotations` copies turned about z by 360°/rotations each (test-time augmentation; 1 = none).
3. Each view is voxelised at `grid_size`. Default: one pass on the lowest-index Gaussian of every voxel
   (the validation transforms' choice) and every Gaussian takes its voxel's row through the inverse.
   `fragments`: Pointcept's test mode: pass i runs the i-th Gaussian (mod count) of every voxel and scores
   only the Gaussians it ran, so every Gaussian is predicted from its own features at least once.
4. A pass of more than `max_points` voxels runs in spatial chunks: the voxels are halved along their
   longest extent until each part, with a `halo` of neighbouring voxels around it for context, fits;
   the scores of a chunk are kept for its own voxels only. A pass that fits runs whole, exactly as the
   validation transforms feed the model.
5. `score(output)` turns the model's output rows into score rows (softmax probabilities, sigmoid
   similarities, ...); each Gaussian's scores are the mean over the passes that scored it.

NOTE: with one view, no fragments and a pass that fits, the model input equals the validation
transforms' (`build_transforms("val")` without `point_budget`), so the voxels' predictions are the ones
the trainer's evaluation scores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.families.scenesplat.task import model_inputs
from engine.families.scenesplat.transforms import FEAT_KEYS, CenterShift, _bounds, rotate, voxel_keys

DEFAULT_HALO_M = 0.5
"""Context around a chunk, in metres: a few of the coarsest level's attention patches of SceneSplat's
backbone at 2 cm voxels (the stem's 5x5x5 conv and the CPE see far less)."""

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InferenceSettings:
    """How a scene is run.

    Attributes:
        grid_size: voxel edge in metres (the profile's `data.grid_size`).
        max_points: the most voxels one forward pass takes (None: the whole scene at once).
        fragments: Pointcept's test-mode fragments instead of one pass per view.
        rotations: test-time views turned about z (1 = none).
        halo: context around a chunk, metres.
    """

    grid_size: float
    max_points: int | None = None
    fragments: bool = False
    rotations: int = 1
    halo: float = DEFAULT_HALO_M


@dataclass
class SceneScores:
    """Per-Gaussian scores of one scene and how they were computed.

    Attributes:
        scores: (N, K) float32, the mean over the passes that scored each Gaussian.
        voxels: voxels of the first view.
        passes: forward passes over whole views or fragments (before chunking).
        forwards: model calls (chunks included).
        max_chunk: the most voxels one model call took.
        kept: (M,) indices of the Gaussians the first view's first pass ran on (the validation transforms'
            choice per voxel without fragments).
    """

    scores: np.ndarray
    voxels: int
    passes: int
    forwards: int
    max_chunk: int
    kept: np.ndarray
    notes: list[str] = field(default_factory=list)


def _voxelise(coord: np.ndarray, grid_size: float, fragments: bool) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray | None]]]:
    """The grid and the passes of one view: `(rows, inverse)` per pass.

    `rows` (M,) are the Gaussians the pass runs, in input order; `inverse` (N,) maps every Gaussian to its
    row (one pass per view), or is None (fragments: the pass scores its own rows only).
    """
    grid, key = voxel_keys(coord, grid_size)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    starts = np.flatnonzero(first)
    if not fragments:
        rows = np.sort(order[starts])
        # Voxel v (key order) keeps order[starts[v]]; its output row is that point's rank among the kept.
        rank = np.empty(len(order), dtype=np.int64)
        rank[rows] = np.arange(len(rows))
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = rank[order[starts]][np.cumsum(first) - 1]
        return grid, [(rows, inverse)]
    counts = np.diff(np.append(starts, len(order)))
    passes = []
    for i in range(int(counts.max())):
        passes.append((np.sort(order[starts + i % counts]), None))
    return grid, passes


def spatial_chunks(coord: np.ndarray, max_points: int, halo: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cuts M voxels into chunks of at most `max_points` voxels each, with context.

    Args:
        coord: (M, 3) voxel positions, metres.
        max_points: the most voxels one chunk may hold, context included (at least 2).
        halo: context around each chunk's own voxels, metres.

    Returns:
        `(own, context)` index arrays per chunk, both sorted: the `own` arrays partition range(M);
        `context` holds `own` and the nearest voxels within `halo` of its bounding box, at most
        `max_points` in all.
    """
    m = len(coord)
    if m <= max_points:
        everything = np.arange(m)
        return [(everything, everything)]
    chunks = []
    stack = [np.arange(m)]
    while stack:
        own = stack.pop()
        lo, hi = _bounds(coord[own])
        # 1. The voxels within `halo` of the part's box.
        inside = np.ones(m, dtype=bool)
        for axis in range(3):
            inside &= (coord[:, axis] >= lo[axis] - halo) & (coord[:, axis] <= hi[axis] + halo)
        context = np.flatnonzero(inside)
        if len(context) <= max_points:
            chunks.append((own, context))
            continue
        # 2. Too many: halve the part at the median of its longest extent ...
        if len(own) > max_points // 2:
            axis = int(np.argmax(hi - lo))
            split = np.argpartition(coord[own, axis], len(own) // 2)
            stack += [np.sort(own[split[len(own) // 2 :]]), np.sort(own[split[: len(own) // 2]])]
            continue
        # 3. ... or, once the part is small, keep the context voxels nearest to its box.
        others = np.setdiff1d(context, own, assume_unique=True)
        gap = np.maximum(np.maximum(lo - coord[others], coord[others] - hi), 0.0)
        nearest = others[np.argsort((gap**2).sum(1), kind="stable")[: max_points - len(own)]]
        chunks.append((own, np.sort(np.concatenate([own, nearest]))))
    return chunks


def _chunk_input(coord: np.ndarray, grid: np.ndarray, feat: np.ndarray) -> dict[str, torch.Tensor]:
    """The model input of one chunk, as the validation transforms end: grid from 0, coord centred in x, y."""
    grid = grid - grid.min(axis=0)
    coord = CenterShift(apply_z=False)({"coord": coord})["coord"]
    return {
        "coord": torch.from_numpy(np.ascontiguousarray(coord, dtype=np.float32)),
        "grid_coord": torch.from_numpy(np.ascontiguousarray(grid)),
        "feat": torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32)),
        "offset": torch.tensor([len(coord)], dtype=torch.int64),
    }


def _features(sample: dict[str, Any]) -> np.ndarray:
    """(N, 11) float32: color, opacity, quat, scale in `Collect`'s order."""
    n = len(sample["coord"])
    return np.concatenate([np.asarray(sample[k], dtype=np.float32).reshape(n, -1) for k in FEAT_KEYS], axis=1)


@torch.no_grad()
def predict_scene(
    model: nn.Module,
    sample: dict[str, Any],
    score: ScoreFn,
    settings: InferenceSettings,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> SceneScores:
    """Scores every Gaussian of one scene (see the module docstring).

    Args:
        model: a PTv3 model (segmentor or language model, with its adapter active), on `device`.
        sample: a built scene (`data.build_sample`): `coord` (N, 3), `color` in [-1, 1], `opacity`,
            `quat`, `scale`.
        score: (M, D) model output -> (M, K) scores, on the model's device.
        settings: grid, chunk size, fragments, rotations.
        autocast: the context the forward runs under (the trainer's mixed precision).

    Returns:
        The scores (N, K) and the pass counts.
    """
    model.eval()
    device = torch.device(device)
    base = {"coord": CenterShift(apply_z=True)({"coord": sample["coord"]})["coord"],
            **{k: sample[k] for k in FEAT_KEYS}}
    n = len(base["coord"])
    total: np.ndarray | None = None
    hits = np.zeros(n, dtype=np.int32)
    result = SceneScores(np.zeros((n, 0), np.float32), 0, 0, 0, 0, np.zeros(0, np.int64))
    for view in range(max(1, settings.rotations)):
        part = base if view == 0 else rotate(base, 2 * np.pi * view / settings.rotations, "z")
        feat = _features(part)
        grid, passes = _voxelise(part["coord"], settings.grid_size, settings.fragments)
        if view == 0:
            result.voxels = len(passes[0][0])
            result.kept = passes[0][0]
        for rows, inverse in passes:
            chunks = spatial_chunks(part["coord"][rows], settings.max_points or len(rows), settings.halo)
            voxel_scores: np.ndarray | None = None
            for own, context in chunks:
                index = rows[context]
                inputs = _chunk_input(part["coord"][index], grid[index], feat[index])
                inputs = {k: v.to(device) for k, v in inputs.items()}
                with autocast or contextlib.nullcontext():
                    out = score(model(model_inputs(inputs))).float()
                out = out[torch.from_numpy(np.searchsorted(context, own)).to(out.device)].cpu().numpy()
                if voxel_scores is None:
                    voxel_scores = np.zeros((len(rows), out.shape[1]), dtype=np.float32)
                voxel_scores[own] = out
                result.forwards += 1
                result.max_chunk = max(result.max_chunk, len(context))
            if total is None:
                total = np.zeros((n, voxel_scores.shape[1]), dtype=np.float32)
            if inverse is not None:
                total += voxel_scores[inverse]
                hits += 1
            else:
                total[rows] += voxel_scores
                hits[rows] += 1
            result.passes += 1
    total /= hits[:, None]  # in place: stays float32
    result.scores = total
    if result.forwards > result.passes:
        result.notes.append(
            f"{result.voxels} voxels ran in {result.forwards} chunks of at most {result.max_chunk} "
            f"(`max_points` {settings.max_points}, {settings.halo:g} m of context around each)"
        )
    return result


__all__ = ["DEFAULT_HALO_M", "InferenceSettings", "SceneScores", "predict_scene", "spatial_chunks"]
