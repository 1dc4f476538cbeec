"""Provides `Point`, the per-level mapping PTv3 passes between modules (Pointcept's input dict layout).

Keys follow Pointcept: `coord` (N, 3) metres, `grid_coord` (N, 3) int voxels, `feat` (N, C),
`offset` (B,) cumulative counts, `batch` (N,) scene index, `serialized_code/order/inverse` (O, N),
`serialized_depth`; pooled levels add `pooling_inverse` and `pooling_parent`. Keys starting with `_`
are caches (neighbour maps, patch plan) owned by this package.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import DataError


class Point(dict):
    """A dict with attribute access; `point.feat` is `point["feat"]`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def offset_to_batch(offset: torch.Tensor, num_points: int | None = None) -> torch.Tensor:
    """Maps (B,) cumulative counts to a (N,) int64 scene index."""
    n = int(offset[-1]) if num_points is None else num_points
    return torch.searchsorted(offset.long(), torch.arange(n, device=offset.device), right=True)


def batch_to_offset(batch: torch.Tensor) -> torch.Tensor:
    """Maps a sorted (N,) scene index to (B,) cumulative counts."""
    return torch.cumsum(torch.bincount(batch.long()), dim=0)


def build_point(data: dict) -> Point:
    """Validates a Pointcept input dict and completes `batch`, `offset` and `grid_coord`.

    Args:
        data: `coord` (N, 3), `feat` (N, C_in), `offset` (B,) or `batch` (N,), and `grid_coord`
            (N, 3) or `grid_size` (float; then grid_coord = trunc((coord - min) / grid_size)).

    Raises:
        DataError: when a required key is missing or the sizes disagree.
    """
    point = Point(data)
    for key in ("coord", "feat"):
        if key not in point:
            raise DataError(f"input.{key}: missing from the model input, got keys {sorted(data)!r}. "
                            "Pass coord (N, 3), feat (N, C), offset (B,) and grid_coord (N, 3).")
    n = point["feat"].shape[0]
    if "offset" in point:
        point["offset"] = point["offset"].long()
        if int(point["offset"][-1]) != n:
            raise DataError(f"input.offset: last entry must equal the number of points {n}, got "
                            f"{point['offset'].tolist()!r}. Pass cumulative per-scene counts.")
        if "batch" not in point:
            point["batch"] = offset_to_batch(point["offset"], n)
    elif "batch" in point:
        point["batch"] = point["batch"].long()
        point["offset"] = batch_to_offset(point["batch"])
    else:
        raise DataError("input.offset: missing from the model input, got neither `offset` nor `batch`. "
                        "Pass offset (B,) cumulative counts.")
    if "grid_coord" not in point:
        if "grid_size" not in point:
            raise DataError("input.grid_coord: missing and no `grid_size` to compute it, got neither. "
                            "Pass grid_coord (N, 3) or grid_size.")
        coord = point["coord"]
        point["grid_coord"] = torch.div(coord - coord.min(0).values, point["grid_size"], rounding_mode="trunc").int()
    point["grid_coord"] = point["grid_coord"].long()
    counts = torch.diff(point["offset"], prepend=point["offset"].new_zeros(1))
    if n and bool((counts <= 0).any()):
        raise DataError(f"input.offset: every scene needs at least one point, got counts {counts.tolist()!r}. "
                        "Drop empty scenes from the batch.")
    if n and int(point["grid_coord"].min()) < 0:
        raise DataError(f"input.grid_coord: voxel coordinates must be non-negative, got a minimum of "
                        f"{int(point['grid_coord'].min())!r}. Subtract the per-scene minimum (GridSample does).")
    return point
