"""Provides `PointTransformerV3M2`, a checkpoint-compatible re-implementation of Pointcept's PT-v3m2.

PT-v3m2 (Pointcept@d74c646 pointcept/models/point_transformer_v3/point_transformer_v3m2_sonata.py) is
the backbone of Sonata and Concerto. State-dict keys and shapes equal Pointcept's, so their
pretraining and fine-tuning checkpoints load with `strict=True` (see checkpoint.py). What it adds over
PT-v3m1 (engine.models.ptv3, whose serialization, submanifold conv and attention it reuses):
LayerNorm everywhere (no BatchNorm), a Linear -> LN -> GELU embedding with an optional mask token,
grid pooling with max + LN + GELU, serialization recomputed at every level with depth
bit_length(max + 1), optional layer scale, `enc_mode` (no decoder; the deepest level is returned with
its `pooling_parent` chain for multi-level heads), `traceable` unpooling and `freeze_encoder`.
Block i of a stage reads order i % len(order); K shrinks to the smallest scene without flash.
Deliberate difference: orders are only shuffled in training mode (Pointcept also shuffles in eval).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from engine.models.ptv3.attention import build_attention_backend
from engine.models.ptv3.point import Point, build_point
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
from engine.models.sonata.blocks import Block, Embedding
from engine.models.sonata.pooling import GridPooling, GridUnpooling, serialize_level

FLASH_DTYPE = torch.bfloat16
"""PT-v3m2's flash path casts qkv to bf16 (PT-v3m1/SceneSplat: fp16)."""


class PointTransformerV3M2(BlockCheckpointing, nn.Module):
    """Point Transformer V3 as in Sonata/Concerto (Pointcept "PT-v3m2"), with Pointcept's constructor.

    The arguments up to `freeze_encoder` are Pointcept's, with Pointcept's defaults.

    Extra arguments:
        sparse_conv_backend: "auto" (spconv on CUDA when importable, else pure torch), "torch" or "spconv".
        attention_backend: "auto" (flash-attn on CUDA when importable and enable_flash, else SDPA),
            "sdpa" or "flash".

    Forward takes the Pointcept input dict (`coord`, `feat`, `offset` or `batch`, `grid_coord` or
    `grid_size`, optional `mask`) and returns a `Point`: with `enc_mode`, the deepest level (rows
    sorted by (batch, x, y, z)) whose `pooling_parent` chain leads back to level 0; otherwise level 0
    in input row order with (N, dec_channels[0]) features.
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
        layer_scale: float | None = None,
        pre_norm: bool = True,
        shuffle_orders: bool = True,
        enable_rpe: bool = False,
        enable_flash: bool = True,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        traceable: bool = False,
        mask_token: bool = False,
        enc_mode: bool = False,
        freeze_encoder: bool = False,
        sparse_conv_backend: str = "auto",
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.order = check_orders(order)
        check_flash(enable_flash, enable_rpe, upcast_attention, upcast_softmax)
        self.num_stages = len(enc_depths)
        self.enc_mode = bool(enc_mode)
        self.shuffle_orders = shuffle_orders
        self.freeze_encoder = freeze_encoder
        stride = as_tuple(stride, self.num_stages - 1, "stride")
        enc_channels = as_tuple(enc_channels, self.num_stages, "enc_channels")
        enc_num_head = as_tuple(enc_num_head, self.num_stages, "enc_num_head")
        enc_patch_size = as_tuple(enc_patch_size, self.num_stages, "enc_patch_size")
        self.enc_channels = enc_channels
        self.conv_backend = build_sparse_conv_backend(sparse_conv_backend)
        self.attention_backend = build_attention_backend(attention_backend, enable_flash, flash_dtype=FLASH_DTYPE)
        block_kw = dict(
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=proj_drop,
            layer_scale=layer_scale, pre_norm=pre_norm, enable_rpe=enable_rpe, enable_flash=enable_flash,
            upcast_attention=upcast_attention, upcast_softmax=upcast_softmax,
            conv_backend=self.conv_backend, attention_backend=self.attention_backend,
        )

        self.embedding = Embedding(in_channels, enc_channels[0], mask_token=mask_token)
        enc_drop = drop_path_rates(drop_path, enc_depths)
        # A container whose forward runs its stages (Pointcept's PointSequential), so the encoder can be
        # wrapped as one module, as DefaultLORASegmentorV2 does with `get_peft_model(backbone.enc, ...)`.
        self.enc = Stage()
        for s in range(self.num_stages):
            stage = Stage()
            if s > 0:
                stage.add_module("down", GridPooling(enc_channels[s - 1], enc_channels[s], stride[s - 1],
                                                     self.order, shuffle_orders=shuffle_orders))
            add_blocks(stage, Block, s, enc_channels[s], enc_num_head[s], enc_patch_size[s], enc_drop[s],
                       len(self.order), block_kw)
            self.enc.add_module(f"enc{s}", stage)

        if not self.enc_mode:
            n_dec = self.num_stages - 1
            dec_depths, dec_channels, dec_num_head, dec_patch_size = decoder_args(
                n_dec, dec_depths, dec_channels, dec_num_head, dec_patch_size, enc_channels, enc_patch_size)
            dec_drop = drop_path_rates(drop_path, dec_depths)
            self.dec = Stage()
            for s in reversed(range(n_dec)):
                stage = Stage()
                stage.add_module("up", GridUnpooling(dec_channels[s + 1], enc_channels[s], dec_channels[s],
                                                     traceable=traceable))
                add_blocks(stage, Block, s, dec_channels[s], dec_num_head[s], dec_patch_size[s], dec_drop[s][::-1],
                           len(self.order), block_kw)
                self.dec.add_module(f"dec{s}", stage)
        self.out_channels = enc_channels[-1] if self.enc_mode else dec_channels[0]
        self.concat_channels = sum(enc_channels) if self.enc_mode else self.out_channels
        if freeze_encoder:
            for param in [*self.embedding.parameters(), *self.enc.parameters()]:
                param.requires_grad_(False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Pointcept's init: truncated normal (std 0.02) for Linear and sparse-conv weights, zero biases."""
        if isinstance(module, (nn.Linear, SubMConv3d)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, data: dict) -> Point:
        """Runs the backbone on a Pointcept input dict (see the class docstring for the result)."""
        point = self.embedding(build_point(data))
        point = serialize_level(point, self.order, self.shuffle_orders and self.training)
        point = self.enc(point)
        if not self.enc_mode:
            point = self.dec(point)
        return point
