"""Provides PT-v3m2 constructor presets for the released Sonata and Concerto backbones.

Plain dicts of `PointTransformerV3M2` kwargs, taken from Pointcept@d74c646 configs (copy before
editing). Concerto base has Sonata base's shape (configs/concerto/pretrain-concerto-v1m1-0-base.py).
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = dict(
    in_channels=9,  # coord(3) + color(3) + normal(3)
    order=("z", "z-trans", "hilbert", "hilbert-trans"),
    stride=(2, 2, 2, 2),
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    attn_drop=0.0,
    proj_drop=0.0,
    drop_path=0.3,
    shuffle_orders=True,
    pre_norm=True,
    enable_rpe=False,
    enable_flash=True,
    upcast_attention=False,
    upcast_softmax=False,
    mask_token=False,
)

# configs/sonata/semseg-sonata-v1m1-0a-scannet-lin.py (encoder only; head on 1232 concatenated channels).
SONATA_BASE_CONFIG: dict[str, Any] = dict(
    _COMMON,
    enc_depths=(3, 3, 3, 12, 3),
    enc_channels=(48, 96, 192, 384, 512),
    enc_num_head=(3, 6, 12, 24, 32),
    enc_patch_size=(1024, 1024, 1024, 1024, 1024),
    traceable=False,
    enc_mode=True,
    freeze_encoder=False,
)

# configs/sonata/semseg-sonata-v1m1-0c-scannet-ft.py (with the decoder; head on 64 channels).
SONATA_BASE_DECODER_CONFIG: dict[str, Any] = dict(
    SONATA_BASE_CONFIG,
    dec_depths=(2, 2, 2, 2),
    dec_channels=(64, 96, 192, 384),
    dec_num_head=(4, 6, 12, 24),
    dec_patch_size=(1024, 1024, 1024, 1024),
    enc_mode=False,
)

# configs/concerto/semseg-ptv3-large-v1m1-0f-scannet-ft-lora.py (encoder frozen, LoRA on qkv; head on 1728).
CONCERTO_LARGE_CONFIG: dict[str, Any] = dict(
    _COMMON,
    enc_depths=(3, 3, 3, 12, 3),
    enc_channels=(64, 128, 256, 512, 768),
    enc_num_head=(4, 8, 16, 32, 48),
    enc_patch_size=(1024, 1024, 1024, 1024, 1024),
    traceable=True,
    enc_mode=True,
    freeze_encoder=True,
)
