"""Provides LoRA target resolution by module name for PTv3 backbones and TripoSG/MIDI DiTs.

The rules only read module names and types, so they work on any module tree that uses Pointcept's
PTv3 names (``enc.enc{s}.block{i}.attn.qkv``, ``.attn.proj``, ``.mlp.0.fc1``, ``.mlp.0.fc2``) or the
TripoSG/MIDI DiT names (``blocks.{i}.attn1|attn2|attn2_2.to_q|to_k|to_v|to_out.0``), with or without a
wrapping prefix such as ``backbone.`` or ``transformer.``.

NOTE: TripoSG/MIDI attention processors treat ``cat(to_q(x), to_k(x), to_v(x))`` as a fused,
head-interleaved qkv (``view(B, N, heads, 3 * head_dim)``), see reference midi.md §1.5. A LoRA on
``to_q`` alone therefore changes q, k *and* v of the first third of the heads, not "the queries".
Target all of ``to_q, to_k, to_v`` (the default) to adapt q, k and v of every head.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from engine.errors import ProfileError

PTV3_MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("qkv", "proj"),
    "mlp": ("fc1", "fc2"),
    "qkv": ("qkv",),
}
"""The target groups and the linear roles (last name part) each one adapts: `attn` and `mlp` are the
PointLoRA guide's; `qkv` alone is what Pointcept's DefaultLORASegmentorV2 adapts (`target_modules=["qkv"]`
on the encoder)."""

_PTV3_ROLE_PATTERNS: dict[str, str] = {
    "qkv": r"attn\.qkv",
    "proj": r"attn\.proj",
    # Pointcept wraps the MLP in a PointSequential (`mlp.0.fc1`); a plain `mlp.fc1` is accepted too.
    "fc1": r"mlp(?:\.0)?\.fc1",
    "fc2": r"mlp(?:\.0)?\.fc2",
}

DIT_ATTENTION_KINDS: dict[str, str] = {"self": "attn1", "cross": "attn2", "cross2": "attn2_2"}
"""Attention kinds of a TripoSG/MIDI DiT block and the module name each one maps to."""

DIT_PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Projection layers of a DiT attention module that may carry LoRA."""

_STAGE_RE = re.compile(r"^(?P<prefix>(?:.+\.)?)(?P<part>enc|dec)\.(?P=part)(?P<index>\d+)$")
_DIT_BLOCK_RE = re.compile(r"^(?P<prefix>(?:.+\.)?)blocks\.(?P<index>\d+)$")


@dataclass(frozen=True)
class StageLayout:
    """The encoder and decoder stages found in a PTv3 module tree.

    Attributes:
        prefix: name prefix of the backbone inside the model, e.g. ``""`` or ``"backbone."``.
        encoder: encoder stage indices present (``enc.enc{s}``), sorted.
        decoder: decoder stage indices present (``dec.dec{s}``), sorted.
    """

    prefix: str
    encoder: tuple[int, ...]
    decoder: tuple[int, ...]

    def describe(self) -> str:
        """Return the valid stages as one human-readable phrase for error messages."""
        enc = ", ".join(str(s) for s in self.encoder)
        text = f"encoder stages {enc}"
        if self.decoder:
            text += ", decoder stages " + ", ".join(f"'dec{s}'" for s in self.decoder)
        return text


@dataclass(frozen=True)
class PTv3Targets:
    """The linear layers chosen for LoRA in a PTv3 model.

    Attributes:
        prefix: backbone prefix inside the model (``""`` or e.g. ``"backbone."``).
        stages: stage keys targeted, e.g. ``("enc2", "enc3")``.
        modules: full module names of the targeted ``nn.Linear`` layers, in model order.
        roles: for each module name, its stage key and role (``qkv``, ``proj``, ``fc1``, ``fc2``).
    """

    prefix: str
    stages: tuple[str, ...]
    modules: tuple[str, ...]
    roles: dict[str, tuple[str, str]] = field(default_factory=dict)


def is_linear_target(module: nn.Module) -> bool:
    """True for an ``nn.Linear`` or a PEFT layer already wrapping one (a second adapter on the same base)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return isinstance(base, nn.Linear)


def find_ptv3_stages(model: nn.Module) -> StageLayout:
    """Find the encoder and decoder stages of a PTv3 backbone by module name.

    Raises:
        ProfileError: the model has no ``enc.enc{s}`` modules, or holds more than one backbone.
    """
    prefixes: set[str] = set()
    encoder: set[int] = set()
    decoder: set[int] = set()
    for name, _ in model.named_modules():
        match = _STAGE_RE.match(name)
        if match is None:
            continue
        prefixes.add(match["prefix"])
        (encoder if match["part"] == "enc" else decoder).add(int(match["index"]))
    if not encoder:
        raise ProfileError(
            f"`model`: no PTv3 encoder stages (`enc.enc0`, `enc.enc1`, ...) found in {type(model).__name__}, "
            f"got none. Pass a Pointcept-style PointTransformerV3 (or a model that wraps one)."
        )
    if len(prefixes) > 1:
        raise ProfileError(
            f"`model`: more than one PTv3 backbone found, got prefixes {sorted(prefixes)!r}. "
            f"Inject into the backbone you want to adapt (e.g. `model.backbone`)."
        )
    return StageLayout(prefixes.pop(), tuple(sorted(encoder)), tuple(sorted(decoder)))


def _normalise_stage(item: int | str, layout: StageLayout, encoder_only: bool) -> list[str]:
    """Map one `target_stages` entry to stage keys, raising ProfileError when it does not exist."""
    valid = layout.describe()
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise ProfileError(
            f"`target_stages`: entries must be stage indices or 'enc<s>'/'dec<s>' names, got {item!r}. "
            f"Valid: {valid}."
        )
    if isinstance(item, int):
        if item not in layout.encoder:
            raise ProfileError(
                f"`target_stages`: stage {item} does not exist in this model, got {item!r}. "
                f"Valid: {valid}."
            )
        keys = [f"enc{item}"]
        if not encoder_only and item in layout.decoder:
            keys.append(f"dec{item}")
        return keys
    match = re.fullmatch(r"(enc|dec)(\d+)", item)
    if match is None:
        raise ProfileError(
            f"`target_stages`: unknown stage name, got {item!r}. Use an index or 'enc<s>'/'dec<s>'; "
            f"valid: {valid}."
        )
    part, index = match[1], int(match[2])
    present = layout.encoder if part == "enc" else layout.decoder
    if index not in present:
        raise ProfileError(
            f"`target_stages`: stage {item!r} does not exist in this model, got {item!r}. Valid: {valid}."
        )
    if part == "dec" and encoder_only:
        raise ProfileError(
            f"`target_stages`: decoder stage {item!r} conflicts with `encoder_only=True`, got {item!r}. "
            f"Set `encoder_only` to False or drop the decoder stage."
        )
    return [item]


def resolve_ptv3_targets(
    model: nn.Module,
    target_modules: Sequence[str] = ("attn",),
    encoder_only: bool = True,
    target_stages: Iterable[int | str] | None = None,
) -> PTv3Targets:
    """Choose the PTv3 linear layers that get LoRA.

    Args:
        model: a PTv3 backbone or a model wrapping one (e.g. under ``backbone.``).
        target_modules: groups to adapt, any of ``"attn"`` (attn.qkv + attn.proj), ``"mlp"`` (fc1 + fc2) and
            ``"qkv"`` (attn.qkv only, as Pointcept's DefaultLORASegmentorV2).
        encoder_only: skip the decoder stages.
        target_stages: ``None`` for every stage; ints select encoder stage ``enc{s}`` (and decoder stage
            ``dec{s}`` when ``encoder_only`` is False); strings ``"enc{s}"``/``"dec{s}"`` select exactly.

    Returns:
        The targeted modules, their stages and roles.

    Raises:
        ProfileError: an unknown group, a stage the model does not have (the message lists the valid
            stages), or a selection that matches no linear layer.
    """
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    unknown = [g for g in target_modules if g not in PTV3_MODULE_GROUPS]
    if unknown or not target_modules:
        raise ProfileError(
            f"`target_modules`: unknown PTv3 target group, got {list(target_modules)!r}. "
            f"Use a non-empty subset of {sorted(PTV3_MODULE_GROUPS)!r}."
        )
    layout = find_ptv3_stages(model)
    if target_stages is None:
        stages = [f"enc{s}" for s in layout.encoder]
        if not encoder_only:
            stages += [f"dec{s}" for s in layout.decoder]
    else:
        stages = []
        for item in target_stages:
            for key in _normalise_stage(item, layout, encoder_only):
                if key not in stages:
                    stages.append(key)
    if not stages:
        raise ProfileError(
            f"`target_stages`: no stage selected, got {target_stages!r}. Valid: {layout.describe()}."
        )
    roles = list(dict.fromkeys(role for group in target_modules for role in PTV3_MODULE_GROUPS[group]))
    role_alt = "|".join(f"(?P<{role}>{_PTV3_ROLE_PATTERNS[role]})" for role in roles)
    stage_alt = "|".join(re.escape(f"{key[:3]}.{key}") for key in stages)
    pattern = re.compile(
        rf"^{re.escape(layout.prefix)}(?P<stage>{stage_alt})\.block\d+\.(?:{role_alt})$"
    )
    modules: list[str] = []
    role_of: dict[str, tuple[str, str]] = {}
    for name, module in model.named_modules():
        match = pattern.match(name)
        if match is None or not is_linear_target(module):
            continue
        role = next(r for r in roles if match[r] is not None)
        modules.append(name)
        role_of[name] = (match["stage"].split(".")[1], role)
    if not modules:
        raise ProfileError(
            f"`target_modules`: no linear layer matched {list(target_modules)!r} in stages {stages!r}, "
            f"got none. Check that the model uses Pointcept's PTv3 module names."
        )
    return PTv3Targets(layout.prefix, tuple(stages), tuple(modules), role_of)


def find_dit_blocks(model: nn.Module) -> tuple[str, tuple[int, ...]]:
    """Return the name prefix of the DiT's ``blocks`` list and the block indices present.

    Raises:
        ProfileError: the model has no ``blocks.{i}`` modules or holds more than one block list.
    """
    prefixes: set[str] = set()
    indices: set[int] = set()
    for name, _ in model.named_modules():
        match = _DIT_BLOCK_RE.match(name)
        if match is not None:
            prefixes.add(match["prefix"])
            indices.add(int(match["index"]))
    if not indices:
        raise ProfileError(
            f"`model`: no DiT blocks (`blocks.0`, `blocks.1`, ...) found in {type(model).__name__}, got none. "
            f"Pass a TripoSG/MIDI DiT (or a model that wraps one)."
        )
    if len(prefixes) > 1:
        raise ProfileError(
            f"`model`: more than one DiT block list found, got prefixes {sorted(prefixes)!r}. "
            f"Inject into the transformer itself."
        )
    return prefixes.pop(), tuple(sorted(indices))


def resolve_dit_targets(
    model: nn.Module,
    blocks: Iterable[int] | None = None,
    attention_kinds: Sequence[str] = ("self", "cross", "cross2"),
    target_modules: Sequence[str] = DIT_PROJECTIONS,
) -> tuple[str, ...]:
    """Choose the DiT attention projections that get LoRA, by exact block index.

    Args:
        model: a TripoSG/MIDI DiT (``TripoSGDiTModel``) or a model wrapping one.
        blocks: block indices to adapt (``None`` = every block). ``1`` selects ``blocks.1`` only,
            never ``blocks.10``.
        attention_kinds: any of ``"self"`` (attn1), ``"cross"`` (attn2), ``"cross2"`` (attn2_2, MIDI only).
        target_modules: projections per attention module, a subset of ``to_q, to_k, to_v, to_out.0``.
            See the module docstring for why ``to_q`` alone touches q, k and v of some heads.

    Returns:
        Full module names of the targeted ``nn.Linear`` layers, in model order.

    Raises:
        ProfileError: an unknown kind or projection, or a block index the model does not have.
    """
    if isinstance(attention_kinds, str):
        attention_kinds = [attention_kinds]
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    bad_kinds = [k for k in attention_kinds if k not in DIT_ATTENTION_KINDS]
    if bad_kinds or not attention_kinds:
        raise ProfileError(
            f"`attention_kinds`: unknown attention kind, got {list(attention_kinds)!r}. "
            f"Use a non-empty subset of {list(DIT_ATTENTION_KINDS)!r}."
        )
    bad_proj = [t for t in target_modules if t not in DIT_PROJECTIONS]
    if bad_proj or not target_modules:
        raise ProfileError(
            f"`target_modules`: unknown DiT projection, got {list(target_modules)!r}. "
            f"Use a non-empty subset of {list(DIT_PROJECTIONS)!r}."
        )
    prefix, present = find_dit_blocks(model)
    if blocks is None:
        chosen = list(present)
    else:
        chosen = []
        for b in blocks:
            if isinstance(b, bool) or not isinstance(b, int) or b not in present:
                raise ProfileError(
                    f"`blocks`: block {b!r} does not exist in this DiT, got {list(blocks)!r}. "
                    f"Valid block indices are {present[0]}..{present[-1]}."
                )
            if b not in chosen:
                chosen.append(b)
    wanted = {
        f"{prefix}blocks.{b}.{DIT_ATTENTION_KINDS[kind]}.{proj}"
        for b in chosen
        for kind in attention_kinds
        for proj in target_modules
    }
    names = [n for n, m in model.named_modules() if n in wanted and is_linear_target(m)]
    for kind in attention_kinds:
        attn = DIT_ATTENTION_KINDS[kind]
        if not any(f".{attn}." in f".{n}" for n in names):
            # A TripoSG DiT has no attn2_2: the MIDI default asks for it, which is not an error.
            warnings.warn(
                f"`attention_kinds`: the model has no `{attn}` modules in the chosen blocks, so "
                f"{kind!r} is ignored.",
                stacklevel=2,
            )
    if not names:
        raise ProfileError(
            f"`target_modules`: no DiT projection matched in blocks {chosen!r}, got none. "
            f"Check that the model uses TripoSG's attention module names."
        )
    return tuple(names)
