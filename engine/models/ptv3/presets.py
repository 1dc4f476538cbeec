"""Provides PTv3 constructor presets: SceneSplat's language-pretraining backbone and Pointcept's defaults.

Both are plain dicts of `PointTransformerV3` kwargs (copy before editing).
"""

from __future__ import annotations

from typing import Any

# SceneSplat@149d7b6:configs/scannet/lang-pretrain-scannet-mcmc-wo-normal-contrastive.py (backbone of
# the released concat checkpoint too): 4 encoder stages, 768-d decoder output, mean pooling.
SCENESPLAT_CONFIG: dict[str, Any] = dict(
    in_channels=11,  # color(3) + opacity(1) + quat(4) + scale(3)
    order=("z", "z-trans", "hilbert", "hilbert-trans"),
    stride=(2, 2, 2),
    enc_depths=(2, 2, 2, 6),
    enc_channels=(32, 64, 128, 256),
    enc_num_head=(2, 4, 8, 16),
    enc_patch_size=(1024, 1024, 1024, 1024),
    dec_depths=(2, 2, 2),
    dec_channels=(768, 512, 256),
    dec_num_head=(16, 16, 16),
    dec_patch_size=(1024, 1024, 1024),
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    attn_drop=0.0,
    proj_drop=0.0,
    drop_path=0.3,
    pre_norm=True,
    shuffle_orders=True,
    enable_rpe=False,
    enable_flash=True,
    upcast_attention=False,
    upcast_softmax=False,
    cls_mode=False,
    pooling="mean",
    serialization_depth_rule="bit_length",
)

# Pointcept@d74c646 PT-v3m1 class defaults: 5 encoder stages, max pooling, depth = bit_length(max + 1).
POINTCEPT_DEFAULT_CONFIG: dict[str, Any] = dict(
    in_channels=6,
    order=("z", "z-trans"),
    stride=(2, 2, 2, 2),
    enc_depths=(2, 2, 2, 6, 2),
    enc_channels=(32, 64, 128, 256, 512),
    enc_num_head=(2, 4, 8, 16, 32),
    enc_patch_size=(48, 48, 48, 48, 48),
    dec_depths=(2, 2, 2, 2),
    dec_channels=(64, 64, 128, 256),
    dec_num_head=(4, 4, 8, 16),
    dec_patch_size=(48, 48, 48, 48),
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    attn_drop=0.0,
    proj_drop=0.0,
    drop_path=0.3,
    pre_norm=True,
    shuffle_orders=True,
    enable_rpe=False,
    enable_flash=True,
    upcast_attention=False,
    upcast_softmax=False,
    enc_mode=False,
    pooling="max",
    serialization_depth_rule="max_plus_one",
)
