"""Provides LoRA on PT-v3m2 the way Pointcept fine-tunes it, its presets as data, and counts without weights.

PT-v3m2 uses PT-v3m1's module names (`enc.enc{s}.block{i}.attn.qkv`, ...), so engine.lora's resolver
finds its stages unchanged. Pointcept's `DefaultLORASegmentorV2` adapts only the encoder's `qkv`
(r 8, alpha 16, dropout 0.1 in the Concerto configs): engine.lora's `qkv` target group. The presets
widen the targets (`attn`: qkv + proj, `attn+mlp`: also fc1, fc2) at Pointcept's rank, alpha and dropout.

`inject_lora_to_sonata` is the seeds' `inject_lora_to_ptv3` call for this backbone (same arguments,
Pointcept's defaults, plus `preset=`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from engine.errors import ProfileError
from engine.lora.inject import inject_targets, is_lora_parameter_name
from engine.lora.spec import PTv3Stages, tuple_or_none
from engine.lora.targets import PTV3_MODULE_GROUPS
from engine.models.sonata.model import PointTransformerV3M2

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "qkv": ("qkv",),
    "attn": ("attn",),
    "attn+mlp": ("attn", "mlp"),
}
"""Target set name -> engine.lora target groups. "qkv" is DefaultLORASegmentorV2's `target_modules=["qkv"]`."""


def target_roles(targets: str) -> tuple[str, ...]:
    """The linear roles (last name part) a target set adapts, e.g. `("qkv", "proj")` for "attn"."""
    _check_targets(targets)
    return tuple(dict.fromkeys(role for group in LORA_TARGETS[targets] for role in PTV3_MODULE_GROUPS[group]))


@dataclass(frozen=True)
class SonataLoraPreset:
    """A named LoRA setting for PT-v3m2 (data: the family applies it to a profile's `lora` keys).

    Attributes:
        name: the preset's name (`lora.preset`).
        r: LoRA rank.
        lora_alpha: LoRA alpha (scale alpha / r).
        lora_dropout: dropout on the LoRA input.
        target_modules: engine.lora target groups on every encoder stage.
        description: one line for the wizard.
    """

    name: str
    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...]
    description: str
    architecture: ClassVar[str] = "PT-v3m2"

    def profile_values(self, context: Any = None) -> dict[str, Any]:
        """The `lora` profile keys this preset sets (every encoder stage: Pointcept adapts them all)."""
        return {"r": self.r, "alpha": float(self.lora_alpha), "dropout": self.lora_dropout,
                "target_modules": list(self.target_modules), "target_stages": None, "encoder_only": True}

    def kwargs(self) -> dict[str, Any]:
        """The `inject_lora_to_sonata` keyword arguments of this preset."""
        return {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": self.target_modules, "encoder_only": True, "target_stages": None}


SONATA_LORA_PRESETS: dict[str, SonataLoraPreset] = {
    p.name: p
    for p in (
        SonataLoraPreset("pointcept-lora", 8, 16, 0.1, ("qkv",),
                         "Pointcept's LoRA (Concerto ft-lora configs): rank 8, alpha 16, dropout 0.1 on every encoder qkv"),
        SonataLoraPreset("attn", 8, 16, 0.1, ("attn",),
                         "rank 8, alpha 16, dropout 0.1 on every encoder attention (qkv + proj)"),
        SonataLoraPreset("attn+mlp", 8, 16, 0.1, ("attn", "mlp"),
                         "rank 8, alpha 16, dropout 0.1 on every encoder attention and MLP: larger domain shifts"),
    )
}
"""PT-v3m2 LoRA presets by name."""

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
    return PTv3Stages(LORA_TARGETS[targets], encoder_only=True).resolve(model).modules


def inject_lora_to_sonata(
    model: nn.Module,
    r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    target_modules: Sequence[str] = ("qkv",),
    encoder_only: bool = True,
    target_stages: Iterable[int | str] | None = None,
    adapter_name: str = "default",
    preset: str | None = None,
) -> nn.Module:
    """Injects PEFT LoRA into a PT-v3m2 model (the seeds' `inject_lora_to_ptv3` call, Pointcept's defaults).

    The layers are PEFT's own, injected in place: keys read `enc.enc0.block0.attn.qkv.lora_A.default.weight`
    where DefaultLORASegmentorV2 has `enc.base_model.model.enc0...` (checkpoint.py converts both ways).

    Args:
        model: a `PointTransformerV3M2` or a model wrapping one (`SonataSegmentor`).
        r, lora_alpha, lora_dropout: LoRA rank, alpha (scale alpha / r) and input dropout.
        target_modules: engine.lora groups: `qkv` (Pointcept's), `attn` (qkv + proj), `mlp` (fc1 + fc2).
        encoder_only: skip decoder stages (Pointcept adapts the encoder only).
        target_stages: None for every stage, or encoder indices / names `enc2`, `dec0`.
        adapter_name: the adapter's name (several may share one base).
        preset: a `SONATA_LORA_PRESETS` name; its values replace the arguments above.

    Returns:
        The same model, with LoRA layers in place and everything else frozen (PEFT's injection).

    Raises:
        ProfileError: an unknown preset, group or stage, or bad hyper-parameters.
    """
    if preset is not None:
        if preset not in SONATA_LORA_PRESETS:
            raise ProfileError(f"preset: not a PT-v3m2 LoRA preset, got {preset!r}. "
                               f"Use one of {sorted(SONATA_LORA_PRESETS)!r}.")
        values = SONATA_LORA_PRESETS[preset].kwargs()
        r, lora_alpha, lora_dropout = values["r"], values["lora_alpha"], values["lora_dropout"]
        target_modules, encoder_only, target_stages = values["target_modules"], True, None
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    rule = PTv3Stages(tuple(target_modules), encoder_only, tuple_or_none(target_stages))
    targets = rule.resolve(model)
    targets.record["backbone"] = "PT-v3m2"
    return inject_targets(model, targets, r, lora_alpha, lora_dropout, adapter_name, preset=preset)


def inject_pointcept_lora(
    model: nn.Module,
    r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    targets: str = "qkv",
    adapter_name: str = "default",
) -> nn.Module:
    """Injects LoRA as Pointcept's DefaultLORASegmentorV2 does (encoder, `targets` set, its defaults)."""
    _check_targets(targets)
    return inject_lora_to_sonata(model, r, lora_alpha, lora_dropout, LORA_TARGETS[targets], True, None, adapter_name)


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
