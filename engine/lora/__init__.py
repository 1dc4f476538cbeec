"""Provides lora3d's LoRA layer: PointLoRA-style API for PTv3 and target rules for the TripoSG/MIDI DiT, on PEFT."""

from engine.lora.adapter_formats import read_lora_checkpoint
from engine.lora.adapter_io import load_lora_checkpoint, save_lora_checkpoint
from engine.lora.architecture import base_fingerprint, base_parameter_shapes
from engine.lora.config import build_lora_config, check_lora_hyperparameters
from engine.lora.inject import (
    enable_prompt_for,
    get_active_adapter,
    get_lora_parameters,
    inject_lora_layers,
    inject_lora_to_dit,
    inject_lora_to_ptv3,
    inject_lora_with_preset,
    iter_lora_layers,
    list_adapters,
    mark_only_lora_as_trainable,
    remove_adapter,
    set_active_adapter,
)
from engine.lora.merge import merge_lora_weights
from engine.lora.presets import DIT_PRESETS, PTV3_PRESETS, DiTLoraPreset, PTv3LoraPreset, get_preset
from engine.lora.prompt import PROMPT_HIDDEN, PromptBank, PromptMLP, enable_prompt, get_prompt_bank
from engine.lora.summary import format_summary_block, lora_summary, print_lora_summary
from engine.lora.targets import (
    DIT_ATTENTION_KINDS,
    DIT_PROJECTIONS,
    PTV3_MODULE_GROUPS,
    PTv3Targets,
    StageLayout,
    find_dit_blocks,
    find_ptv3_stages,
    resolve_dit_targets,
    resolve_ptv3_targets,
)

__all__ = [
    "DIT_ATTENTION_KINDS",
    "DIT_PRESETS",
    "DIT_PROJECTIONS",
    "PROMPT_HIDDEN",
    "PTV3_MODULE_GROUPS",
    "PTV3_PRESETS",
    "DiTLoraPreset",
    "PTv3LoraPreset",
    "PTv3Targets",
    "PromptBank",
    "PromptMLP",
    "StageLayout",
    "base_fingerprint",
    "base_parameter_shapes",
    "build_lora_config",
    "check_lora_hyperparameters",
    "enable_prompt",
    "enable_prompt_for",
    "find_dit_blocks",
    "find_ptv3_stages",
    "format_summary_block",
    "get_active_adapter",
    "get_lora_parameters",
    "get_preset",
    "get_prompt_bank",
    "inject_lora_layers",
    "inject_lora_to_dit",
    "inject_lora_to_ptv3",
    "inject_lora_with_preset",
    "iter_lora_layers",
    "list_adapters",
    "load_lora_checkpoint",
    "lora_summary",
    "mark_only_lora_as_trainable",
    "merge_lora_weights",
    "print_lora_summary",
    "read_lora_checkpoint",
    "remove_adapter",
    "resolve_dit_targets",
    "resolve_ptv3_targets",
    "save_lora_checkpoint",
    "set_active_adapter",
]
