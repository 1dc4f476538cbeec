"""Provides the LoRA spec: what to adapt and how, as data a family hands to `engine.lora.apply_lora_spec`.

PEFT's split, kept here: the spec's rank, alpha and dropout are the *what*, PEFT's LoRA layers (plus
PointLoRA prompts) the *how*, and `targets`, a rule that resolves to module names on a given model, the
*where*. Families build a spec from their resolved profile; the injection itself is the same for all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import nn

from engine.errors import ProfileError
from engine.lora.targets import DIT_PROJECTIONS, resolve_dit_targets, resolve_ptv3_targets


@dataclass(frozen=True)
class Targets:
    """Target modules resolved on one model.

    Attributes:
        modules: full names of the linear layers that get LoRA, in model order.
        record: JSON-ready description of the rule and its result (stored as `model.lora3d_targets[name]`
            and in the adapter's metadata).
        roles: for PTv3, `{module: (stage, role)}`, which PointLoRA prompts attach by.
    """

    modules: tuple[str, ...]
    record: dict[str, Any]
    roles: dict[str, tuple[str, str]] = field(default_factory=dict)


class TargetRule(Protocol):
    """Where LoRA goes, as a rule over module names; `resolve` raises ProfileError naming the valid choices."""

    def resolve(self, model: nn.Module) -> Targets: ...


@dataclass(frozen=True)
class PTv3Stages:
    """PTv3 linear layers by group (`attn`, `qkv`, `mlp`) and stage (see `resolve_ptv3_targets`)."""

    target_modules: tuple[str, ...] = ("attn",)
    encoder_only: bool = True
    target_stages: tuple[int | str, ...] | None = None

    def resolve(self, model: nn.Module) -> Targets:
        found = resolve_ptv3_targets(model, self.target_modules, self.encoder_only, self.target_stages)
        record = {
            "family": "ptv3",
            "target_modules": list(self.target_modules),
            "encoder_only": self.encoder_only,
            "target_stages": list(self.target_stages) if self.target_stages is not None else None,
            "stages": list(found.stages),
            "prefix": found.prefix,
            "roles": {name: list(role) for name, role in found.roles.items()},
        }
        return Targets(found.modules, record, dict(found.roles))


@dataclass(frozen=True)
class DiTAttention:
    """TripoSG/MIDI DiT attention projections by block and attention kind (see `resolve_dit_targets`).

    `skip_single_key_queries`: leave out `attn2.to_q` where the CLIP condition is one token (MIDI): attention
    over a single key ignores the query (the softmax of one score is 1), so that LoRA would never learn. The
    skipped names are recorded, not dropped silently.
    """

    blocks: tuple[int, ...] | None = None
    attention_kinds: tuple[str, ...] = ("self", "cross", "cross2")
    target_modules: tuple[str, ...] = DIT_PROJECTIONS
    skip_single_key_queries: bool = False

    def resolve(self, model: nn.Module) -> Targets:
        names = list(resolve_dit_targets(model, self.blocks, self.attention_kinds, self.target_modules))
        skipped = [n for n in names if n.endswith("attn2.to_q")] if self.skip_single_key_queries else []
        names = [n for n in names if n not in skipped]
        if not names:
            raise ProfileError(
                f"`lora.target_modules`: nothing left to adapt, got {list(self.target_modules)} on "
                f"{list(self.attention_kinds)}. The CLIP cross-attention's `to_q` has no effect (one key token); "
                "add `to_k`, `to_v` or `to_out.0`."
            )
        record = {
            "family": "dit",
            "blocks": list(self.blocks) if self.blocks is not None else None,
            "attention_kinds": list(self.attention_kinds),
            "target_modules": list(self.target_modules),
            "skipped": skipped,
        }
        return Targets(tuple(names), record)


@dataclass(frozen=True)
class ModuleNames:
    """Exact module names (plugins and tests with small models)."""

    names: tuple[str, ...]

    def resolve(self, model: nn.Module) -> Targets:
        present = dict(model.named_modules())
        missing = [n for n in self.names if n not in present]
        if missing or not self.names:
            raise ProfileError(
                f"`lora.target_modules`: no module named {missing or list(self.names)!r} in "
                f"{type(model).__name__}. Use names from `model.named_modules()`."
            )
        return Targets(tuple(self.names), {"family": "modules", "target_modules": list(self.names)})


@dataclass(frozen=True)
class LoraSpec:
    """What a run adapts and how.

    Attributes:
        method: `lora` (adapters on a frozen base) or `full` (every base parameter trains).
        r: LoRA rank.
        alpha: LoRA alpha (the update is scaled by alpha / r).
        dropout: dropout on the LoRA branch input.
        targets: the rule that picks the adapted layers (None with `full`).
        enable_prompt: add PointLoRA prompt MLPs (PTv3 targets only).
        trainable_modules: modules trained in full next to the adapter (e.g. a new segmentation head).
        preset: the preset the values came from, for records.
    """

    method: Literal["lora", "full"] = "lora"
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: TargetRule | None = None
    enable_prompt: bool = False
    trainable_modules: tuple[str, ...] = ()
    preset: str | None = None


def tuple_or_none(values: Iterable[Any] | None) -> tuple[Any, ...] | None:
    """A profile list as a tuple (specs are frozen and hashable), keeping None."""
    return None if values is None else tuple(values)
