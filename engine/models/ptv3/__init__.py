"""Provides the Point Transformer V3 (PT-v3m1) backbone, its task wrappers, presets and checkpoint loading."""

from engine.models.ptv3.checkpoint import (
    LoadReport,
    freeze_batch_norm,
    load_base_weights,
    load_pretrained,
    load_ptv3_state_dict,
    resolve_checkpoint_file,
)
from engine.models.ptv3.heads import PTv3LanguageModel, PTv3Segmentor
from engine.models.ptv3.model import PointTransformerV3
from engine.models.ptv3.point import Point
from engine.models.ptv3.presets import POINTCEPT_DEFAULT_CONFIG, SCENESPLAT_CONFIG

__all__ = [
    "POINTCEPT_DEFAULT_CONFIG",
    "SCENESPLAT_CONFIG",
    "LoadReport",
    "PTv3LanguageModel",
    "PTv3Segmentor",
    "Point",
    "PointTransformerV3",
    "freeze_batch_norm",
    "load_base_weights",
    "load_pretrained",
    "load_ptv3_state_dict",
    "resolve_checkpoint_file",
]
