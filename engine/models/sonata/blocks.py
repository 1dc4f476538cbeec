"""Provides PT-v3m2's embedding (Linear -> LN -> GELU, optional mask token), layer scale and block.

Mirrors Pointcept@d74c646 point_transformer_v3m2_sonata.py `Embedding`, `LayerScale` and `Block`
(keys `embedding.stem.{linear,norm}`, `embedding.mask_token`, `cpe.{0,1,2}`, `norm1.0`, `ls1.0.gamma`,
`attn.{qkv,proj}`, `norm2.0`, `ls2.0.gamma`, `mlp.0.{fc1,fc2}`). The attention, submanifold conv,
MLP and drop path are PT-v3m1's (engine.models.ptv3): their maths is the same in both versions.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.errors import DataError
from engine.models.ptv3.attention import SerializedAttention
from engine.models.ptv3.model import MLP, DropPath
from engine.models.ptv3.point import Point
from engine.models.ptv3.sparse_conv import SubMConv3d


class Embedding(nn.Module):
    """Per-point Linear -> LayerNorm -> GELU (no sparse-conv stem, unlike PT-v3m1).

    With `mask_token`, the features of points whose input `mask` is True are replaced by a learned
    token (Sonata/Concerto pretraining masks points this way).
    """

    def __init__(self, in_channels: int, channels: int, mask_token: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.stem = nn.Sequential(OrderedDict(
            linear=nn.Linear(in_channels, channels), norm=nn.LayerNorm(channels), act=nn.GELU(),
        ))
        self.mask_token = nn.Parameter(torch.zeros(1, channels)) if mask_token else None

    def forward(self, point: Point) -> Point:
        if point["feat"].shape[1] != self.in_channels:
            raise DataError(f"input.feat: the model expects {self.in_channels} channels per point, got "
                            f"{point['feat'].shape[1]}. Build the model with in_channels="
                            f"{point['feat'].shape[1]} or fix the feature keys.")
        feat = self.stem(point["feat"])
        if "mask" in point:
            if self.mask_token is None:
                raise DataError("input.mask: the input masks points but the model has no mask token, got a "
                                "`mask` key. Build the model with mask_token=True or drop `mask`.")
            feat = torch.where(point["mask"].unsqueeze(-1), self.mask_token.to(feat.dtype), feat)
        point["feat"] = feat
        return point


class LayerScale(nn.Module):
    """Per-channel learned scale `x * gamma` (key `gamma`), initialised to `init_values`."""

    def __init__(self, channels: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """One PT-v3m2 block: CPE residual, attention residual, MLP residual, each branch with layer scale.

    Pre-norm: `x += LN(Linear(SubMConv3d(x)))`; `x += ls1(attn(LN1(x)))`; `x += ls2(mlp(LN2(x)))`
    (drop path on the attention and MLP branches). Unlike PT-v3m1's decoder, the CPE always reads
    the block input: PT-v3m2 refreshes the sparse tensor after unpooling too.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        proj_drop: float,
        drop_path: float,
        layer_scale: float | None,
        pre_norm: bool,
        order_index: int,
        cpe_indice_key: str,
        enable_rpe: bool,
        enable_flash: bool,
        upcast_attention: bool,
        upcast_softmax: bool,
        conv_backend: Any,
        attention_backend: Any,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.pre_norm = pre_norm
        self.order_index = order_index
        self.use_checkpoint = False
        # Registration order follows Pointcept so state_dict keys come out in the same order.
        self.cpe = nn.ModuleList([
            SubMConv3d(channels, channels, 3, bias=True, indice_key=cpe_indice_key, backend=conv_backend),
            nn.Linear(channels, channels),
            nn.LayerNorm(channels),
        ])
        self.norm1 = nn.ModuleList([nn.LayerNorm(channels)])
        self.ls1 = nn.ModuleList([LayerScale(channels, layer_scale) if layer_scale is not None else nn.Identity()])
        self.attn = SerializedAttention(
            channels, num_heads, patch_size, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
            proj_drop=proj_drop, order_index=order_index, enable_rpe=enable_rpe, enable_flash=enable_flash,
            upcast_attention=upcast_attention, upcast_softmax=upcast_softmax, backend=attention_backend,
        )
        self.norm2 = nn.ModuleList([nn.LayerNorm(channels)])
        self.ls2 = nn.ModuleList([LayerScale(channels, layer_scale) if layer_scale is not None else nn.Identity()])
        self.mlp = nn.ModuleList([MLP(channels, int(channels * mlp_ratio), drop=proj_drop)])
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _forward_feat(self, feat: torch.Tensor, level: Point) -> torch.Tensor:
        """Pure function of the (N, C) block input at `level`."""
        feat = feat + self.cpe[2](self.cpe[1](self.cpe[0](feat, level)))
        shortcut = feat
        if self.pre_norm:
            feat = self.norm1[0](feat)
        feat = shortcut + self.drop_path(self.ls1[0](self.attn(feat, level)))
        if not self.pre_norm:
            feat = self.norm1[0](feat)
        shortcut = feat
        if self.pre_norm:
            feat = self.norm2[0](feat)
        feat = shortcut + self.drop_path(self.ls2[0](self.mlp[0](feat)))
        if not self.pre_norm:
            feat = self.norm2[0](feat)
        return feat

    def forward(self, point: Point) -> Point:
        """Updates `point.feat` (N, C)."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            # Build the level's patch plan outside the checkpointed region so recomputation reuses it.
            self.attn.patch_plan(point)
            point["feat"] = checkpoint(self._forward_feat, point["feat"], point, use_reentrant=False)
        else:
            point["feat"] = self._forward_feat(point["feat"], point)
        return point
