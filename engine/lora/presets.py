"""Provides the named LoRA presets for PTv3 (PointLoRA guide) and for the TripoSG/MIDI DiT.

PTv3 presets (the guide's table, with stages resolved against the actual model):

| preset         | r  | alpha | modules  | stages                                   | prompt |
|----------------|----|-------|----------|------------------------------------------|--------|
| `minimal`      | 4  | 4     | attn     | last two encoder stages ([3, 4] on Pointcept's 5-stage default, [2, 3] on SceneSplat's 4) | no |
| `standard`     | 8  | 8     | attn     | every encoder stage                      | no     |
| `full`         | 16 | 16    | attn+mlp | every encoder and decoder stage          | yes    |
| `decoder_only` | 8  | 8     | attn     | every decoder stage                      | no     |

DiT presets (the MIDI seed: rank 16, alpha 16, dropout 0.1, to_q/to_k/to_v/to_out.0):

| preset         | blocks          | attention kinds            |
|----------------|-----------------|----------------------------|
| `midi_default` | all             | self, cross, cross2        |
| `mi_blocks`    | 8, 9, 10, 11, 12 (the multi-instance blocks) | self, cross, cross2 |
| `self_only`    | all             | self                       |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from torch import nn

from engine.errors import ProfileError
from engine.lora.targets import StageLayout, find_ptv3_stages

StageRule = Literal["last_two_encoder", "all_encoder", "all", "decoder"]


class LoraPreset(Protocol):
    """A named preset: the `lora` profile keys it sets, given what it needs to know about the model."""

    name: str
    description: str

    def profile_values(self, context: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PTv3LoraPreset:
    """A PTv3 preset; `stages` is a rule resolved against the model's own stage count.

    Attributes:
        name: preset name used in profiles (`lora.preset`).
        r: LoRA rank.
        lora_alpha: LoRA alpha (scale alpha / r).
        target_modules: PTv3 target groups (`attn`, `mlp`).
        stages: which stages to adapt.
        enable_prompt: add PointLoRA prompt MLPs.
        description: one line for the wizard.
    """

    name: str
    r: int
    lora_alpha: int
    target_modules: tuple[str, ...]
    stages: StageRule
    enable_prompt: bool
    description: str
    architecture: ClassVar[str] = "PTv3"

    def profile_values(self, layout: StageLayout) -> dict[str, Any]:
        """The `lora` profile keys this preset sets on a backbone with `layout`'s stages."""
        kwargs = self.kwargs(layout)
        return {
            "r": kwargs["r"],
            "alpha": float(kwargs["lora_alpha"]),
            "target_modules": kwargs["target_modules"],
            "enable_prompt": kwargs["enable_prompt"],
            "encoder_only": kwargs["encoder_only"],
            "target_stages": kwargs["target_stages"],
        }

    def resolve(self, model: nn.Module) -> dict[str, Any]:
        """Return the `inject_lora_to_ptv3` keyword arguments of this preset for `model`."""
        return self.kwargs(find_ptv3_stages(model))

    def kwargs(self, layout: StageLayout) -> dict[str, Any]:
        """The `inject_lora_to_ptv3` keyword arguments of this preset for a backbone with `layout`'s stages."""
        kwargs: dict[str, Any] = {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "enable_prompt": self.enable_prompt,
        }
        if self.stages == "last_two_encoder":
            kwargs.update(encoder_only=True, target_stages=list(layout.encoder[-2:]))
        elif self.stages == "all_encoder":
            kwargs.update(encoder_only=True, target_stages=None)
        elif self.stages == "all":
            kwargs.update(encoder_only=False, target_stages=None)
        else:
            if not layout.decoder:
                raise ProfileError(
                    f"`lora.preset`: {self.name!r} needs a decoder, got a PTv3 without `dec` stages. "
                    f"Use 'standard' or 'minimal' for an encoder-only backbone."
                )
            kwargs.update(encoder_only=False, target_stages=[f"dec{s}" for s in layout.decoder])
        return kwargs


@dataclass(frozen=True)
class DiTLoraPreset:
    """A DiT preset: rank, alpha, dropout, blocks and attention kinds.

    Attributes:
        name: preset name used in profiles (`lora.preset`).
        r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: dropout on the LoRA input.
        blocks: block indices, or None for every block.
        attention_kinds: `self` (attn1), `cross` (attn2), `cross2` (attn2_2).
        description: one line for the wizard.
    """

    name: str
    r: int
    lora_alpha: int
    lora_dropout: float
    blocks: tuple[int, ...] | None
    attention_kinds: tuple[str, ...]
    description: str
    architecture: ClassVar[str] = "DiT"

    def profile_values(self, kinds: Any = None) -> dict[str, Any]:
        """The `lora` profile keys this preset sets; `kinds` (when given) are the attention kinds the model has,
        so a MIDI preset on a TripoSG model (no `cross2`) keeps only what exists."""
        wanted = [k for k in self.attention_kinds if kinds is None or k in kinds]
        return {
            "r": self.r,
            "alpha": float(self.lora_alpha),
            "dropout": self.lora_dropout,
            "target_blocks": list(self.blocks) if self.blocks is not None else None,
            "attention_kinds": wanted,
        }

    def resolve(self, model: nn.Module) -> dict[str, Any]:
        """Return the `inject_lora_to_dit` keyword arguments of this preset."""
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "blocks": list(self.blocks) if self.blocks is not None else None,
            "attention_kinds": list(self.attention_kinds),
        }


PTV3_PRESETS: dict[str, PTv3LoraPreset] = {
    p.name: p
    for p in (
        PTv3LoraPreset("minimal", 4, 4, ("attn",), "last_two_encoder", False,
                       "rank 4, attention of the two deepest encoder stages: quick adaptation"),
        PTv3LoraPreset("standard", 8, 8, ("attn",), "all_encoder", False,
                       "rank 8, attention of every encoder stage: general fine-tuning"),
        PTv3LoraPreset("full", 16, 16, ("attn", "mlp"), "all", True,
                       "rank 16, attention + MLP of every stage, prompt MLPs: large domain shift"),
        PTv3LoraPreset("decoder_only", 8, 8, ("attn",), "decoder", False,
                       "rank 8, attention of every decoder stage: task-specific heads"),
    )
}
"""PTv3 presets by name."""

DIT_PRESETS: dict[str, DiTLoraPreset] = {
    p.name: p
    for p in (
        DiTLoraPreset("midi_default", 16, 16, 0.1, None, ("self", "cross", "cross2"),
                      "rank 16, q/k/v/out of every attention in every block (MIDI seed defaults)"),
        DiTLoraPreset("mi_blocks", 16, 16, 0.1, (8, 9, 10, 11, 12), ("self", "cross", "cross2"),
                      "rank 16, only the multi-instance blocks 8-12"),
        DiTLoraPreset("self_only", 16, 16, 0.1, None, ("self",),
                      "rank 16, self-attention only, conditioning paths untouched"),
    )
}
"""DiT presets by name."""


def get_preset(name: str) -> PTv3LoraPreset | DiTLoraPreset:
    """Return a PTv3 or DiT preset by name.

    Raises:
        ProfileError: the name is not a preset; the message lists them.
    """
    preset = PTV3_PRESETS.get(name) or DIT_PRESETS.get(name)
    if preset is None:
        raise ProfileError(
            f"`lora.preset`: unknown preset, got {name!r}. Use one of "
            f"{sorted(PTV3_PRESETS)!r} (PTv3) or {sorted(DIT_PRESETS)!r} (DiT)."
        )
    return preset


def resolve_preset(
    name: str,
    current: Mapping[str, Any],
    preset: Mapping[str, Any],
    explicit: set[str],
    cli: set[str],
) -> tuple[dict[str, Any], list[str]]:
    """Applies a preset to a profile's `lora` keys: the one rule, used everywhere a preset resolves.

    The rule: a key given next to the preset wins over it (in the same file, or on the command line); a
    preset given on the command line wins over the keys of the profile file. Where the two disagree, a note
    says which value won.

    Args:
        name: the preset's name (for the notes).
        current: the profile's `lora` keys as validated (file and command line merged).
        preset: the keys the preset sets (`LoraPreset.profile_values`).
        explicit: keys set anywhere (the pydantic model's `model_fields_set`).
        cli: keys given on the command line (without the `lora.` prefix); contains `preset` when the
            preset itself came from the command line.

    Returns:
        The resolved keys and the notes.
    """
    preset_from_cli = "preset" in cli
    out = dict(current)
    notes = []
    for key, value in preset.items():
        given = current.get(key)
        if key in cli or (key in explicit and not preset_from_cli):
            if given != value:
                where = "the command line" if key in cli else "the profile"
                notes.append(f"`lora.{key}`: {given!r} from {where} wins over preset `{name}`'s {value!r}")
            continue
        if key in explicit and given != value:
            notes.append(f"`lora.{key}`: preset `{name}` (command line) sets {value!r}, replacing the profile's {given!r}")
        out[key] = value
    return out, notes
