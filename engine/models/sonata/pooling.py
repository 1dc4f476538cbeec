"""Provides PT-v3m2's levels: serialization of a level, grid pooling and grid unpooling.

Mirrors Pointcept@d74c646 point_transformer_v3m2_sonata.py `GridPooling` / `GridUnpooling` (keys
`down.proj`, `down.norm.0`, `up.proj.{0,1}`, `up.proj_skip.{0,1}`) and `Point.serialization`:
- a pooled cell is `grid_coord // stride` within a scene; cells come out sorted by (batch, x, y, z);
  the cell feature is the elementwise max of `proj(feat)` over its points, then LayerNorm, GELU;
- every level (level 0 and each pooled one) is serialized from scratch with depth
  `int(max grid_coord + 1).bit_length()` over the batch (PT-v3m1 pools by code instead).
Deliberate difference: orders are shuffled only in training mode and only with `shuffle_orders`
(Pointcept's pooling is built without that flag and shuffles its levels always, even in eval).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.ptv3.point import Point, batch_to_offset
from engine.models.ptv3.pooling import _segment_reduce
from engine.models.ptv3.serialization import serialization_depth, serialize

DEPTH_RULE = "max_plus_one"
"""PT-v3m2's serialization depth rule: int(max grid coordinate + 1).bit_length()."""

# Keys Pointcept carries from a level to its pooled level unchanged (metadata, no geometry).
_CARRIED_KEYS = ("condition", "context", "name", "split")


def serialize_level(point: Point, orders: Sequence[str], shuffle: bool) -> Point:
    """Adds `serialized_code/order/inverse/depth` (O, N) to a level, with the depth recomputed for it.

    Args:
        point: a level with `grid_coord` and `batch`.
        orders: serialization order names, in the model's order.
        shuffle: permute the order list (training with `shuffle_orders`).
    """
    depth = serialization_depth(point["grid_coord"], DEPTH_RULE)
    code, order, inverse = serialize(point["grid_coord"], point["batch"], tuple(orders), depth)
    if shuffle:
        perm = torch.randperm(code.shape[0], device=code.device)
        code, order, inverse = code[perm], order[perm], inverse[perm]
    point.update(serialized_code=code, serialized_order=order, serialized_inverse=inverse,
                 serialized_depth=depth)
    return point


def grid_clusters(grid_coord: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups points by (batch, x, y, z) cell.

    Args:
        grid_coord: (N, 3) non-negative integer cell coordinates.
        batch: (N,) scene index.

    Returns:
        cells (M, 3) sorted by (batch, x, y, z), cluster (N,) cell index of every point, and head (M,)
        one point of every cell.
    """
    g = grid_coord.long()
    extent = (g.max(0).values + 1).tolist() if g.numel() else [1, 1, 1]
    # One int64 key per cell; its order is the lexicographic (batch, x, y, z) order Pointcept's
    # torch.unique(dim=0) over `grid | batch << 48` produces.
    key = ((batch.long() * extent[0] + g[:, 0]) * extent[1] + g[:, 1]) * extent[2] + g[:, 2]
    _, cluster, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    num = counts.shape[0]
    head = torch.full((num,), g.shape[0], dtype=torch.long, device=g.device)
    head = head.scatter_reduce(0, cluster, torch.arange(g.shape[0], device=g.device), reduce="amin")
    return g[head], cluster, head


class GridPooling(nn.Module):
    """Pools a level into cells `grid_coord // stride` (module `down`).

    Args:
        in_channels: channels of the finer level.
        out_channels: channels of the pooled level (after `proj`).
        stride: cell size in finer-level voxels.
        orders: serialization orders of the pooled level.
        shuffle_orders: permute the pooled level's order list in training mode.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, orders: Sequence[str],
                 shuffle_orders: bool = True) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride: pooling stride must be at least 1, got {stride!r}.")
        self.stride = stride
        self.orders = tuple(orders)
        self.shuffle_orders = shuffle_orders
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.LayerNorm(out_channels))
        self.act = nn.Sequential(nn.GELU())

    def forward(self, point: Point) -> Point:
        """Returns the pooled level; it keeps `pooling_parent` and `pooling_inverse` (traceable)."""
        cells, cluster, head = grid_clusters(torch.div(point["grid_coord"], self.stride, rounding_mode="floor"),
                                             point["batch"])
        num = cells.shape[0]
        feat = _segment_reduce(self.proj(point["feat"]), cluster, num, "max")
        batch = point["batch"][head]
        pooled = Point(
            feat=self.act(self.norm(feat)),
            coord=_segment_reduce(point["coord"], cluster, num, "mean"),
            grid_coord=cells,
            batch=batch,
            offset=batch_to_offset(batch),
            pooling_inverse=cluster,
            pooling_parent=point,
        )
        if "grid_size" in point:
            pooled["grid_size"] = point["grid_size"] * self.stride
        for key in _CARRIED_KEYS:
            if key in point:
                pooled[key] = point[key]
        return serialize_level(pooled, self.orders, self.shuffle_orders and self.training)


class GridUnpooling(nn.Module):
    """Maps a coarse level back onto its parent: `proj_skip(parent) + proj(coarse)[cluster]` (module `up`).

    `proj` and `proj_skip` are Linear -> LayerNorm -> GELU. With `traceable`, the coarse level is kept
    on the parent as `unpooling_parent`.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, traceable: bool = False) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, out_channels), nn.LayerNorm(out_channels), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(skip_channels, out_channels), nn.LayerNorm(out_channels), nn.GELU())
        self.traceable = traceable

    def forward(self, point: Point) -> Point:
        """Returns the parent level with the fused features."""
        parent = point.pop("pooling_parent")
        parent["feat"] = self.proj_skip(parent["feat"]) + self.proj(point["feat"])[point["pooling_inverse"]]
        if self.traceable:
            parent["unpooling_parent"] = point
        return parent
