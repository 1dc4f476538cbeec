"""Provides the PT-v3m2 segmentor with Pointcept's key layout and its multi-level feature concatenation.

`SonataSegmentor` mirrors Pointcept@d74c646 pointcept/models/default.py `DefaultSegmentorV2` and
`DefaultLORASegmentorV2` (keys `backbone.*`, `seg_head.*`): a linear head on the backbone's per-point
features. With `enc_mode` those are every encoder level concatenated back onto level 0, shallowest
first (`concat_levels`); with the decoder they are its level-0 output. `DefaultLORASegmentorV2`
wraps `backbone.enc` in a PEFT model, which only renames keys (see checkpoint.py); lora3d injects
the same PEFT layers in place instead (see lora.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.errors import ProfileError
from engine.models.ptv3.point import Point
from engine.models.sonata.model import PointTransformerV3M2


def concat_levels(point: Point) -> torch.Tensor:
    """Concatenates the features of every level along its `pooling_parent` chain onto level 0.

    Args:
        point: the backbone output; the deepest level in enc_mode, else level 0.

    Returns:
        (N, sum of the levels' channels) in level-0 (input) row order:
        `[f_0 | f_1[inv_1] | f_2[inv_2][inv_1] | ...]`, where inv_s maps level s-1 rows to level-s cells.
    """
    feat = point["feat"]
    while "pooling_parent" in point:
        parent = point["pooling_parent"]
        feat = torch.cat([parent["feat"], feat[point["pooling_inverse"]]], dim=-1)
        point = parent
    return feat


class SonataSegmentor(nn.Module):
    """PT-v3m2 backbone + `nn.Linear` segmentation head (Pointcept's DefaultSegmentorV2 layout).

    Args:
        backbone: a backbone or its constructor kwargs.
        num_classes: classes of the head (0 keeps an identity head, as Pointcept does).
        backbone_out_channels: input width of the head; default: the backbone's concatenated width
            (sum of enc_channels) in enc_mode, else dec_channels[0].
        freeze_backbone: stop gradients to every backbone parameter (linear probing), as Pointcept's
            `freeze_backbone`.

    A backbone with no trainable parameter (frozen, no LoRA) runs under `torch.no_grad`, as
    DefaultLORASegmentorV2 does for a frozen backbone without LoRA: same numbers, no stored activations.
    """

    def __init__(self, backbone: PointTransformerV3M2 | dict[str, Any], num_classes: int,
                 backbone_out_channels: int | None = None, freeze_backbone: bool = False) -> None:
        super().__init__()
        # Pointcept builds seg_head first, so its keys lead the state dict.
        self.backbone_out_channels = backbone_out_channels
        self.num_classes = num_classes
        model = backbone if isinstance(backbone, PointTransformerV3M2) else PointTransformerV3M2(**backbone)
        width = backbone_out_channels if backbone_out_channels is not None else model.concat_channels
        if width != model.concat_channels:
            raise ProfileError(f"backbone_out_channels: the backbone gives {model.concat_channels} channels per "
                             f"point, got {width!r}. Use {model.concat_channels} (or leave it unset).")
        self.seg_head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        self.backbone = model
        if freeze_backbone:
            for param in self.backbone.parameters():
                param.requires_grad_(False)

    def features(self, data: dict) -> torch.Tensor:
        """Returns the (N, C) per-point features the head reads, in input row order."""
        if any(p.requires_grad for p in self.backbone.parameters()):
            return concat_levels(self.backbone(data))
        with torch.no_grad():
            return concat_levels(self.backbone(data))

    def forward(self, data: dict) -> torch.Tensor:
        """Returns (N, num_classes) logits in input row order."""
        return self.seg_head(self.features(data))
