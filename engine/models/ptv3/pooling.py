"""Provides PTv3's serialized pooling (octree-parent clusters) and unpooling with skip projection.

Mirrors Pointcept point_transformer_v3m1_base.py `SerializedPooling` / `SerializedUnpooling` (keys
`down.proj`, `down.norm.0`, `up.proj.{0,1}`, `up.proj_skip.{0,1}`). SceneSplat reduces each cluster
with a mean; Pointcept with a max.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.ptv3.point import Point, batch_to_offset

POOLING_REDUCTIONS = ("mean", "max")


def _segment_reduce(x: torch.Tensor, cluster: torch.Tensor, num: int, reduce: str) -> torch.Tensor:
    """Reduces rows of x (N, C) into `num` clusters given (N,) cluster ids."""
    if reduce == "mean":
        total = x.new_zeros(num, x.shape[1]).index_add(0, cluster, x)
        counts = torch.bincount(cluster, minlength=num).clamp_(min=1).to(x.dtype)
        return total / counts[:, None]
    index = cluster[:, None].expand_as(x)
    return x.new_zeros(num, x.shape[1]).scatter_reduce(0, index, x, reduce="amax", include_self=False)


class SerializedPooling(nn.Module):
    """Pools every point into its parent cell: `code >> 3*depth_step` of order 0's code.

    Args:
        in_channels: input channels.
        out_channels: output channels (after `proj`).
        stride: pooling stride, a power of two.
        reduce: "mean" (SceneSplat) or "max" (Pointcept).
        shuffle_orders: permute the order list of the pooled level in training mode.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, reduce: str = "mean",
                 shuffle_orders: bool = True) -> None:
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"stride: pooling stride must be a power of two, got {stride!r}.")
        if reduce not in POOLING_REDUCTIONS:
            raise ValueError(f"pooling: unknown reduction, got {reduce!r}. Use one of {POOLING_REDUCTIONS}.")
        self.stride = stride
        self.reduce = reduce
        self.shuffle_orders = shuffle_orders
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01))
        self.act = nn.Sequential(nn.GELU())

    def forward(self, point: Point) -> Point:
        """Returns the pooled level; it keeps `pooling_parent` and `pooling_inverse` for unpooling."""
        depth_step = (self.stride - 1).bit_length()
        if depth_step > point["serialized_depth"]:
            depth_step = 0
        code = point["serialized_code"] >> (depth_step * 3)
        # 1. Clusters = distinct parent cells of order 0 (the scene index sits in the top bits).
        _, cluster, counts = torch.unique(code[0], sorted=True, return_inverse=True, return_counts=True)
        num = counts.shape[0]
        head = torch.full((num,), code.shape[1], dtype=torch.long, device=code.device)
        head = head.scatter_reduce(0, cluster, torch.arange(code.shape[1], device=code.device), reduce="amin")
        # 2. The parent codes of every order, re-sorted.
        code = code[:, head]
        order = torch.argsort(code, dim=1)
        inverse = torch.empty_like(order)
        inverse.scatter_(1, order, torch.arange(code.shape[1], device=code.device).expand_as(order))
        if self.shuffle_orders and self.training:
            perm = torch.randperm(code.shape[0], device=code.device)
            code, order, inverse = code[perm], order[perm], inverse[perm]
        # 3. Features and coordinates of the clusters.
        feat = _segment_reduce(self.proj(point["feat"]), cluster, num, self.reduce)
        batch = point["batch"][head]
        pooled = Point(
            feat=self.act(self.norm(feat)),
            coord=_segment_reduce(point["coord"], cluster, num, "mean"),
            grid_coord=point["grid_coord"][head] >> depth_step,
            serialized_code=code,
            serialized_order=order,
            serialized_inverse=inverse,
            serialized_depth=point["serialized_depth"] - depth_step,
            batch=batch,
            offset=batch_to_offset(batch),
            pooling_inverse=cluster,
            pooling_parent=point,
        )
        pooled["sparse_conv_feat"] = pooled["feat"]
        return pooled


class SerializedUnpooling(nn.Module):
    """Maps a coarse level back onto its parent: `proj_skip(parent) + proj(coarse)[cluster]`.

    NOTE: the parent's `sparse_conv_feat` is left equal to the `proj_skip` branch only, so the CPE
    of the first decoder block convolves that, not the sum (Pointcept/SceneSplat quirk; the
    checkpoints were trained with it).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(in_channels, out_channels), nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01), nn.GELU()
        )
        self.proj_skip = nn.Sequential(
            nn.Linear(skip_channels, out_channels), nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01), nn.GELU()
        )

    def forward(self, point: Point) -> Point:
        """Returns the parent level with the fused features."""
        parent = point.pop("pooling_parent")
        cluster = point.pop("pooling_inverse")
        skip = self.proj_skip(parent["feat"])
        parent["sparse_conv_feat"] = skip
        parent["feat"] = skip + self.proj(point["feat"])[cluster]
        return parent
