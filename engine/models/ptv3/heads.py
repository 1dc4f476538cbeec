"""Provides task wrappers around the PTv3 backbone with Pointcept/SceneSplat checkpoint key layouts.

- `PTv3Segmentor` mirrors Pointcept's `DefaultSegmentorV2` (keys `backbone.*`, `seg_head.*`): a
  linear head on the backbone's per-point features.
- `PTv3LanguageModel` mirrors SceneSplat's `LangPretrainer` (keys `backbone.*` only; no head): the
  decoder's 768-d output, L2-normalised, is the SigLIP2 language feature
  (SceneSplat@149d7b6:pointcept/models/default.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.ptv3.model import PointTransformerV3


def _build_backbone(backbone: PointTransformerV3 | dict[str, Any]) -> PointTransformerV3:
    return backbone if isinstance(backbone, PointTransformerV3) else PointTransformerV3(**backbone)


class PTv3Segmentor(nn.Module):
    """Backbone + `nn.Linear` segmentation head.

    Args:
        backbone: a backbone or its constructor kwargs.
        num_classes: classes of the head (0 keeps an identity head, as Pointcept does).
    """

    def __init__(self, backbone: PointTransformerV3 | dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.backbone = _build_backbone(backbone)
        self.num_classes = num_classes
        self.seg_head = nn.Linear(self.backbone.out_channels, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, data: dict) -> torch.Tensor:
        """Returns (N, num_classes) logits in input row order."""
        return self.seg_head(self.backbone(data)["feat"])


class PTv3LanguageModel(nn.Module):
    """Backbone whose per-point output is L2-normalised into a language-embedding space.

    Args:
        backbone: a backbone or its constructor kwargs (SceneSplat: dec_channels[0] = 768).
    """

    def __init__(self, backbone: PointTransformerV3 | dict[str, Any]) -> None:
        super().__init__()
        self.backbone = _build_backbone(backbone)
        self.embed_dim = self.backbone.out_channels

    def forward(self, data: dict) -> torch.Tensor:
        """Returns (N, embed_dim) unit-norm features in input row order."""
        return F.normalize(self.backbone(data)["feat"], p=2, dim=1)
