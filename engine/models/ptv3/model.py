"""Provides `PointTransformerV3`, a checkpoint-compatible re-implementation of Pointcept's PT-v3m1.

State-dict keys and shapes equal Pointcept's (pointcept/models/point_transformer_v3/
point_transformer_v3m1_base.py; SceneSplat@149d7b6 keeps a copy), so SceneSplat and Pointcept
checkpoints load with `strict=True`. Quirks kept on purpose, each because checkpoints depend on it:
decoder block 0's CPE reads the skip projection only (see pooling.py), block i uses serialization
order i % len(order), copy-padding of patches (see attention.py), BN eps 1e-3, exact GELU.
Deliberate differences: orders are only shuffled in training mode (Pointcept also shuffles in eval),
and the pooling shuffle follows `shuffle_orders` (Pointcept's pooling always shuffles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.errors import ProfileError
from engine.models.ptv3.attention import SerializedAttention, build_attention_backend
from engine.models.ptv3.point import Point, build_point
from engine.models.ptv3.pooling import POOLING_REDUCTIONS, SerializedPooling, SerializedUnpooling
from engine.models.ptv3.serialization import (
    DEPTH_RULES,
    serialization_depth,
    serialize,
)
from engine.models.ptv3.sparse_conv import SubMConv3d, build_sparse_conv_backend
from engine.models.ptv3.stages import (
    BlockCheckpointing,
    Stage,
    add_blocks,
    as_tuple,
    check_flash,
    check_orders,
    decoder_args,
    drop_path_rates,
)


class DropPath(nn.Module):
    """Stochastic depth per row of a (N, C) tensor, i.e. per point (timm's DropPath on point features)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(keep)
        return x * mask / keep


class MLP(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (keys `fc1`, `fc2`)."""

    def __init__(self, channels: int, hidden_channels: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """One PTv3 block: CPE (subm conv -> Linear -> LN) residual, attention residual, MLP residual.

    Keys: `cpe.{0,1,2}`, `norm1.0`, `attn.{qkv,proj}`, `norm2.0`, `mlp.0.{fc1,fc2}`.
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
        self.pre_norm = pre_norm
        self.order_index = order_index
        self.use_checkpoint = False
        self.cpe = nn.ModuleList([
            SubMConv3d(channels, channels, 3, bias=True, indice_key=cpe_indice_key, backend=conv_backend),
            nn.Linear(channels, channels),
            nn.LayerNorm(channels),
        ])
        self.norm1 = nn.ModuleList([nn.LayerNorm(channels)])
        self.attn = SerializedAttention(
            channels, num_heads, patch_size, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
            proj_drop=proj_drop, order_index=order_index, enable_rpe=enable_rpe, enable_flash=enable_flash,
            upcast_attention=upcast_attention, upcast_softmax=upcast_softmax, backend=attention_backend,
        )
        self.norm2 = nn.ModuleList([nn.LayerNorm(channels)])
        self.mlp = nn.ModuleList([MLP(channels, int(channels * mlp_ratio), drop=proj_drop)])
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _forward_feat(self, feat: torch.Tensor, conv_feat: torch.Tensor, level: Point) -> torch.Tensor:
        """Pure function of (N, C) features; `conv_feat` is what the CPE convolution reads."""
        cpe = self.cpe[2](self.cpe[1](self.cpe[0](conv_feat, level)))
        feat = feat + cpe
        shortcut = feat
        if self.pre_norm:
            feat = self.norm1[0](feat)
        feat = shortcut + self.drop_path(self.attn(feat, level))
        if not self.pre_norm:
            feat = self.norm1[0](feat)
        shortcut = feat
        if self.pre_norm:
            feat = self.norm2[0](feat)
        feat = shortcut + self.drop_path(self.mlp[0](feat))
        if not self.pre_norm:
            feat = self.norm2[0](feat)
        return feat

    def forward(self, point: Point) -> Point:
        """Updates `point.feat` (N, C) and resets `sparse_conv_feat` to it."""
        conv_feat = point.get("sparse_conv_feat", point["feat"])
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            # Build the level caches outside the checkpointed region so recomputation reuses them.
            self.attn.patch_plan(point)
            feat = checkpoint(self._forward_feat, point["feat"], conv_feat, point, use_reentrant=False)
        else:
            feat = self._forward_feat(point["feat"], conv_feat, point)
        point["feat"] = feat
        point["sparse_conv_feat"] = feat
        return point


class Stem(nn.Module):
    """SubMConv3d(k=5, no bias) -> BN -> GELU (keys `conv`, `norm`)."""

    def __init__(self, in_channels: int, channels: int, conv_backend: Any) -> None:
        super().__init__()
        self.conv = SubMConv3d(in_channels, channels, 5, bias=False, indice_key="stem", backend=conv_backend)
        self.norm = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.act = nn.GELU()

    def forward(self, feat: torch.Tensor, level: Point) -> torch.Tensor:
        return self.act(self.norm(self.conv(feat, level)))


class Embedding(nn.Module):
    """Holds the stem (key prefix `embedding.stem`)."""

    def __init__(self, in_channels: int, channels: int, conv_backend: Any) -> None:
        super().__init__()
        self.stem = Stem(in_channels, channels, conv_backend)

    def forward(self, point: Point) -> Point:
        point["feat"] = self.stem(point["feat"], point)
        point["sparse_conv_feat"] = point["feat"]
        return point


class PointTransformerV3(BlockCheckpointing, nn.Module):
    """Point Transformer V3 (PT-v3m1) with Pointcept's constructor and state-dict layout.

    The arguments up to `pdnorm_conditions` are Pointcept's, with Pointcept's defaults. `cls_mode`
    (SceneSplat / Pointcept < 1.6.1) and `enc_mode` (newer) both skip the decoder. PDNorm is not
    implemented: enabling `pdnorm_bn` or `pdnorm_ln` raises.

    Extra arguments:
        pooling: cluster reduction of SerializedPooling, "mean" (SceneSplat's copy, the default) or
            "max" (Pointcept).
        serialization_depth_rule: "bit_length" = int(max grid coord).bit_length() (SceneSplat,
            Pointcept <= 1.5, the default) or "max_plus_one" = int(max + 1).bit_length() (Pointcept >= 1.6).
        sparse_conv_backend: "auto" (spconv on CUDA when importable, else pure torch), "torch" or "spconv".
        attention_backend: "auto" (flash-attn on CUDA when importable and enable_flash, else SDPA),
            "sdpa" or "flash".

    Forward takes the Pointcept input dict and returns a `Point` whose `feat` is (N, dec_channels[0])
    in input row order (with `enc_mode`/`cls_mode`: the deepest level's points and features).
    """

    block_type = Block

    def __init__(
        self,
        in_channels: int = 6,
        order: str | Sequence[str] = ("z", "z-trans"),
        stride: Sequence[int] = (2, 2, 2, 2),
        enc_depths: Sequence[int] = (2, 2, 2, 6, 2),
        enc_channels: Sequence[int] = (32, 64, 128, 256, 512),
        enc_num_head: Sequence[int] = (2, 4, 8, 16, 32),
        enc_patch_size: Sequence[int] = (48, 48, 48, 48, 48),
        dec_depths: Sequence[int] = (2, 2, 2, 2),
        dec_channels: Sequence[int] = (64, 64, 128, 256),
        dec_num_head: Sequence[int] = (4, 4, 8, 16),
        dec_patch_size: Sequence[int] = (48, 48, 48, 48),
        mlp_ratio: float = 4,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.3,
        pre_norm: bool = True,
        shuffle_orders: bool = True,
        enable_rpe: bool = False,
        enable_flash: bool = True,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        enc_mode: bool = False,
        cls_mode: bool = False,
        pdnorm_bn: bool = False,
        pdnorm_ln: bool = False,
        pdnorm_decouple: bool = True,
        pdnorm_adaptive: bool = False,
        pdnorm_affine: bool = True,
        pdnorm_conditions: Sequence[str] = ("ScanNet", "S3DIS", "Structured3D"),
        pooling: str = "mean",
        serialization_depth_rule: str = "bit_length",
        sparse_conv_backend: str = "auto",
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if pdnorm_bn or pdnorm_ln:
            raise ProfileError(f"pdnorm_bn/pdnorm_ln: PDNorm is not supported, got pdnorm_bn={pdnorm_bn!r}, "
                               f"pdnorm_ln={pdnorm_ln!r}. Set both to False.")
        self.order = check_orders(order)
        if pooling not in POOLING_REDUCTIONS:
            raise ProfileError(f"pooling: unknown reduction, got {pooling!r}. Use one of {POOLING_REDUCTIONS}.")
        if serialization_depth_rule not in DEPTH_RULES:
            raise ProfileError(f"serialization_depth_rule: unknown rule, got {serialization_depth_rule!r}. "
                               f"Use one of {DEPTH_RULES}.")
        check_flash(enable_flash, enable_rpe, upcast_attention, upcast_softmax)
        self.num_stages = len(enc_depths)
        self.enc_mode = bool(enc_mode or cls_mode)
        self.shuffle_orders = shuffle_orders
        self.serialization_depth_rule = serialization_depth_rule
        stride = as_tuple(stride, self.num_stages - 1, "stride")
        enc_channels = as_tuple(enc_channels, self.num_stages, "enc_channels")
        enc_num_head = as_tuple(enc_num_head, self.num_stages, "enc_num_head")
        enc_patch_size = as_tuple(enc_patch_size, self.num_stages, "enc_patch_size")
        self.conv_backend = build_sparse_conv_backend(sparse_conv_backend)
        self.attention_backend = build_attention_backend(attention_backend, enable_flash)
        block_kw = dict(
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=proj_drop,
            pre_norm=pre_norm, enable_rpe=enable_rpe, enable_flash=enable_flash,
            upcast_attention=upcast_attention, upcast_softmax=upcast_softmax,
            conv_backend=self.conv_backend, attention_backend=self.attention_backend,
        )

        self.embedding = Embedding(in_channels, enc_channels[0], self.conv_backend)
        enc_drop = drop_path_rates(drop_path, enc_depths)
        self.enc = nn.Module()
        for s in range(self.num_stages):
            stage = Stage()
            if s > 0:
                stage.add_module("down", SerializedPooling(
                    enc_channels[s - 1], enc_channels[s], stride=stride[s - 1], reduce=pooling,
                    shuffle_orders=shuffle_orders,
                ))
            add_blocks(stage, Block, s, enc_channels[s], enc_num_head[s], enc_patch_size[s], enc_drop[s],
                       len(self.order), block_kw)
            self.enc.add_module(f"enc{s}", stage)

        if not self.enc_mode:
            n_dec = self.num_stages - 1
            dec_depths, dec_channels, dec_num_head, dec_patch_size = decoder_args(
                n_dec, dec_depths, dec_channels, dec_num_head, dec_patch_size, enc_channels, enc_patch_size)
            dec_drop = drop_path_rates(drop_path, dec_depths)
            self.dec = nn.Module()
            for s in reversed(range(n_dec)):
                stage = Stage()
                stage.add_module("up", SerializedUnpooling(dec_channels[s + 1], enc_channels[s], dec_channels[s]))
                add_blocks(stage, Block, s, dec_channels[s], dec_num_head[s], dec_patch_size[s], dec_drop[s][::-1],
                           len(self.order), block_kw)
                self.dec.add_module(f"dec{s}", stage)
        self.out_channels = enc_channels[-1] if self.enc_mode else dec_channels[0]

    def serialize(self, point: Point) -> Point:
        """Adds `serialized_code/order/inverse/depth` to a level-0 point."""
        depth = serialization_depth(point["grid_coord"], self.serialization_depth_rule)
        code, order, inverse = serialize(point["grid_coord"], point["batch"], self.order, depth)
        if self.shuffle_orders and self.training:
            perm = torch.randperm(code.shape[0], device=code.device)
            code, order, inverse = code[perm], order[perm], inverse[perm]
        point.update(serialized_code=code, serialized_order=order, serialized_inverse=inverse,
                     serialized_depth=depth)
        return point

    def forward(self, data: dict, return_intermediates: bool = False) -> Point:
        """Runs the backbone.

        Args:
            data: `coord` (N, 3), `feat` (N, in_channels), `offset` (B,) (or `batch` (N,)), and
                `grid_coord` (N, 3) (or `grid_size`).
            return_intermediates: also return `intermediates`: a dict of name -> Point(feat,
                grid_coord, batch) for "stem", "enc{s}" and "dec{s}" (level s rows in internal order;
                level 0 in input order).

        Returns:
            The final Point; `feat` is (N, dec_channels[0]) in input row order.
        """
        point = self.serialize(build_point(data))
        inter: dict[str, Point] = {}

        def record(name: str, p: Point) -> None:
            if return_intermediates:
                inter[name] = Point(feat=p["feat"], grid_coord=p["grid_coord"], batch=p["batch"])

        point = self.embedding(point)
        record("stem", point)
        for name, stage in self.enc.named_children():
            point = stage(point)
            record(name, point)
        if not self.enc_mode:
            for name, stage in self.dec.named_children():
                point = stage(point)
                record(name, point)
        if return_intermediates:
            point["intermediates"] = inter
        return point
