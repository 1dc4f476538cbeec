"""Provides Pointcept's PT-v3m2 (the Sonata / Concerto backbone), its segmentor, presets, checkpoints and LoRA."""

from engine.models.sonata.checkpoint import SonataLoadReport, load_sonata_checkpoint, pointcept_state_dict
from engine.models.sonata.heads import SonataSegmentor, concat_levels
from engine.models.sonata.lora import (
    LORA_TARGETS,
    POINTCEPT_LORA,
    SONATA_LORA_PRESETS,
    SonataLoraPreset,
    count_lora_parameters,
    inject_lora_to_sonata,
    inject_pointcept_lora,
    lora_target_names,
    target_roles,
)
from engine.models.sonata.model import PointTransformerV3M2
from engine.models.sonata.presets import CONCERTO_LARGE_CONFIG, SONATA_BASE_CONFIG, SONATA_BASE_DECODER_CONFIG

__all__ = [
    "CONCERTO_LARGE_CONFIG",
    "LORA_TARGETS",
    "POINTCEPT_LORA",
    "SONATA_BASE_CONFIG",
    "SONATA_BASE_DECODER_CONFIG",
    "SONATA_LORA_PRESETS",
    "PointTransformerV3M2",
    "SonataLoadReport",
    "SonataLoraPreset",
    "SonataSegmentor",
    "concat_levels",
    "count_lora_parameters",
    "inject_lora_to_sonata",
    "inject_pointcept_lora",
    "load_sonata_checkpoint",
    "lora_target_names",
    "pointcept_state_dict",
    "target_roles",
]
