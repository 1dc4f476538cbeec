"""Provides LoRA on PT-v3m2 the way Pointcept fine-tunes it, and LoRA parameter counts without weights.

PT-v3m2 uses PT-v3m1's module names (`enc.enc{s}.block{i}.attn.qkv`, ...), so engine.lora's resolver
finds its stages unchanged. Pointcept's `DefaultLORASegmentorV2` adapts only the encoder's `qkv`
(r 8, alpha 16, dropout 0.1 in the Concerto configs); lora3d's target groups have no qkv-only group
yet, so `lora_target_names` filters the `attn` group's `qkv` role (full module names for PEFT).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.errors import ProfileError
from engine.lora.config import build_lora_config
from engine.lora.inject import inject_lora_layers, is_lora_parameter_name
from engine.lora.targets import resolve_ptv3_targets
from engine.models.sonata.model import PointTransformerV3M2

LORA_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qkv": (("attn",), ("qkv",)),
    "attn": (("attn",), ("qkv", "proj")),
    "attn+mlp": (("attn", "mlp"), ("qkv", "proj", "fc1", "fc2")),
}
"""Target name -> (engine.lora target groups, linear roles kept). "qkv" is DefaultLORASegmentorV2's."""

POINTCEPT_LORA: dict[str, Any] = dict(r=8, lora_alpha=16, lora_dropout=0.1, targets="qkv")
"""Pointcept's LoRA fine-tuning settings (configs/concerto/*-ft-lora.py, DefaultLORASegmentorV2 defaults)."""


def _check_targets(targets: str) -> None:
    if targets not in LORA_TARGETS:
        raise ProfileError(f"lora.targets: unknown PT-v3m2 LoRA target set, got {targets!r}. "
                           f"Use one of {sorted(LORA_TARGETS)!r}.")


def lora_target_names(model: nn.Module, targets: str = "qkv") -> tuple[str, ...]:
    """Full names of the encoder linears that get LoRA.

    Args:
        model: a `PointTransformerV3M2` or a model wrapping one (e.g. `SonataSegmentor`).
        targets: "qkv" (Pointcept's LoRA), "attn" (qkv + proj) or "attn+mlp" (also fc1, fc2).
    """
    _check_targets(targets)
    groups, roles = LORA_TARGETS[targets]
    resolved = resolve_ptv3_targets(model, groups, encoder_only=True)
    return tuple(name for name in resolved.modules if resolved.roles[name][1] in roles)


def inject_pointcept_lora(
    model: nn.Module,
    r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    targets: str = "qkv",
    adapter_name: str = "default",
) -> nn.Module:
    """Injects PEFT LoRA into the encoder of a PT-v3m2 model (defaults: Pointcept's LoRA fine-tuning).

    The layers are PEFT's own, injected in place: keys read `enc.enc0.block0.attn.qkv.lora_A.default.weight`
    where DefaultLORASegmentorV2 has `enc.base_model.model.enc0...` (checkpoint.py converts both ways).

    Returns:
        The same model, with LoRA layers in place and everything else frozen (PEFT's injection).
    """
    names = lora_target_names(model, targets)
    resolved = resolve_ptv3_targets(model, LORA_TARGETS[targets][0], encoder_only=True)
    config = build_lora_config(names, r, lora_alpha, lora_dropout)
    record: dict[str, Any] = {
        "family": "ptv3",
        "backbone": "PT-v3m2",
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": float(lora_dropout),
        "target_modules": [targets],
        "encoder_only": True,
        "target_stages": None,
        "stages": list(resolved.stages),
        "prefix": resolved.prefix,
        "roles": {name: list(resolved.roles[name]) for name in names},
        "enable_prompt": False,
    }
    return inject_lora_layers(model, config, adapter_name, record)


def count_lora_parameters(config: dict[str, Any], r: int, targets: str = "qkv") -> dict[str, int]:
    """Counts LoRA and base parameters of a PT-v3m2 backbone on the meta device (no weights allocated).

    Args:
        config: `PointTransformerV3M2` kwargs (e.g. CONCERTO_LARGE_CONFIG).
        r: LoRA rank.
        targets: one of `LORA_TARGETS`.

    Returns:
        `{"lora": ..., "base": ..., "modules": ...}`: LoRA parameters, backbone parameters without
        LoRA, and the number of adapted linears.
    """
    _check_targets(targets)
    with torch.device("meta"):
        model = PointTransformerV3M2(**{**config, "sparse_conv_backend": "torch", "attention_backend": "sdpa"})
        base = sum(p.numel() for p in model.parameters())
        inject_pointcept_lora(model, r=r, lora_alpha=r, lora_dropout=0.0, targets=targets)
    lora = sum(p.numel() for n, p in model.named_parameters() if is_lora_parameter_name(n))
    return {"lora": lora, "base": base, "modules": len(model.lora3d_targets["default"]["modules"])}
