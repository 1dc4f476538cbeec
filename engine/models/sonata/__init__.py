"""Provides Pointcept's PT-v3m2 (the Sonata / Concerto backbone), its segmentor, presets, checkpoints and LoRA."""

from engine.models.sonata.checkpoint import SonataLoadReport, load_sonata_checkpoint, pointcept_state_dict
from engine.models.sonata.heads import SonataSegmentor, concat_levels
from engine.models.sonata.lora import (
    LORA_TARGETS,
    POINTCEPT_LORA,
    count_lora_parameters,
    inject_pointcept_lora,
    lora_target_names,
)
from engine.models.sonata.model import PointTransformerV3M2
from engine.models.sonata.presets import CONCERTO_LARGE_CONFIG, SONATA_BASE_CONFIG, SONATA_BASE_DECODER_CONFIG

__all__ = [
    "CONCERTO_LARGE_CONFIG",
    "LORA_TARGETS",
    "POINTCEPT_LORA",
    "SONATA_BASE_CONFIG",
    "SONATA_BASE_DECODER_CONFIG",
    "PointTransformerV3M2",
    "SonataLoadReport",
    "SonataSegmentor",
    "concat_levels",
    "count_lora_parameters",
    "inject_pointcept_lora",
    "load_sonata_checkpoint",
    "lora_target_names",
    "pointcept_state_dict",
]
