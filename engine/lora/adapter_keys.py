"""Provides adapter key names: foreign key layouts normalised to PEFT's and mapped onto a model's modules.

The layouts lora3d reads (see docs/interop.md):

- PEFT ``save_pretrained``, and lora3d itself: ``base_model.model.<module>.lora_A.weight``;
- `peft.get_peft_model_state_dict`, diffusers ``save_lora_adapter``, older lora3d: ``<module>.lora_A.weight``;
- a PEFT-injected model's own ``state_dict()``, MIDI-3D's ``save_custom_adapter``:
  ``[transformer.]<module>.lora_A.default.weight`` (adapter name between the part and ``weight``);
- Pointcept's ``DefaultLORASegmentorV2`` training checkpoint: ``[module.]backbone.enc.base_model.model.
  enc0.block0.attn.qkv.lora_A.default.weight`` (`get_peft_model` wraps ``backbone.enc`` only), next to
  the base weights and the head; its ``enc.save_pretrained`` folder has keys relative to ``enc``.

`normalise_keys` turns every form into ``<module>.lora_A.weight``; `align_to_model` then finds the one
prefix change (``transformer.`` -> ``""``, ``""`` -> ``enc.``) that puts every adapted module onto a
module of the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.lora.prompt import PROMPT_ATTR

PEFT_PREFIX = "base_model.model."
"""What `PeftModel` puts in front of every key (`save_pretrained` writes it, `from_pretrained` expects it)."""

LORA_PARTS = ("lora_A", "lora_B")
_OTHER_ADAPTER_PARTS = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
_NAMED = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<adapter>[^.]+)\.(?P<kind>weight|bias)$")
_PLAIN = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<kind>weight|bias)$")


def short_keys(keys: Iterable[str], limit: int = 4) -> str:
    """Name the first `limit` keys in backticks and count the rest."""
    keys = list(keys)
    shown = ", ".join(f"`{k}`" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def is_lora_key(key: str) -> bool:
    """True for a LoRA weight of any layout (``...lora_A.weight``, ``...lora_B.default.weight``)."""
    parts = key.split(".")
    return any(p in LORA_PARTS or p in _OTHER_ADAPTER_PARTS for p in parts)


def lora_module(key: str) -> str | None:
    """The adapted module of a normalised LoRA key (``a.b.lora_A.weight`` -> ``a.b``), else None."""
    match = _PLAIN.match(key)
    return match["module"] if match else None


def normalise_keys(tensors: dict[str, torch.Tensor], source: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename keys to PEFT's saved form ``<module>.lora_A.weight``.

    Drops DDP's ``module.`` (when every key has it), every ``base_model.model.`` (at the start or, in a
    Pointcept checkpoint, in the middle), the adapter name after ``lora_A``/``lora_B``, and adds
    ``.weight`` to a bare ``lora_A``.

    Returns:
        The renamed tensors and one phrase per change made (empty for lora3d's and PEFT's own files).

    Raises:
        CheckpointError: the file holds several adapters (two adapter names), or two keys collapse into one.
    """
    notes: list[str] = []
    keys = list(tensors)
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k.removeprefix("module.") for k in keys]
        notes.append("dropped DDP's `module.` prefix")
    inner = [k for k in keys if f".{PEFT_PREFIX}" in k]
    if inner:
        outer = sorted({k.split(f".{PEFT_PREFIX}")[0] for k in inner})
        notes.append(f"unwrapped PEFT's `base_model.model.` inside {short_keys(outer)} (a Pointcept-style wrapped submodule)")
    keys = [k.removeprefix(PEFT_PREFIX).replace(f".{PEFT_PREFIX}", ".") for k in keys]
    names = {m["adapter"] for k in keys if (m := _NAMED.match(k))}
    if len(names) > 1:
        raise CheckpointError(
            f"{source}: the file holds several adapters, got adapter names {sorted(names)!r}. "
            f"Save one adapter per file (PEFT: `save_pretrained(..., selected_adapters=[name])`)."
        )
    if names:
        notes.append(f"dropped the adapter name `{names.pop()}` from the LoRA keys")
    out: dict[str, torch.Tensor] = {}
    for old, key in zip(tensors, keys):
        match = _NAMED.match(key)
        if match:
            key = f"{match['module']}.{match['part']}.{match['kind']}"
        elif key.rsplit(".", 1)[-1] in LORA_PARTS:
            key = f"{key}.weight"
        if key in out:
            raise CheckpointError(
                f"{source}: two tensors map to the same adapter key, got `{old}` and another for `{key}`. "
                f"Keep one copy of each LoRA tensor in the file."
            )
        out[key] = tensors[old]
    return out, notes


def _find_mapping(modules: list[str], model_names: set[str]) -> tuple[str, str] | list[tuple[str, str]] | None:
    """The (strip, add) prefix change that maps every adapted module onto a model module.

    Tries to keep as much of the adapter's names as possible: first no strip, then one leading part, ...
    Returns the mapping, a list of equally good mappings when ambiguous, or None.
    """
    first = modules[0].split(".")
    for cut in range(len(first)):
        strip = ".".join(first[:cut]) + ("." if cut else "")
        rest = ".".join(first[cut:])
        adds = {name[: len(name) - len(rest)] for name in model_names if name == rest or name.endswith(f".{rest}")}
        valid = sorted(
            (strip, add) for add in adds
            if all(m.startswith(strip) and f"{add}{m[len(strip):]}" in model_names for m in modules)
        )
        if len(valid) == 1:
            return valid[0]
        if valid:
            return valid
    return None


def align_to_model(
    tensors: dict[str, torch.Tensor], model: nn.Module, source: Path
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Rename the adapter's module paths so that each names a module of `model`.

    Returns:
        The renamed tensors and a phrase describing the prefix change, or None when none was needed.

    Raises:
        CheckpointError: no single prefix change fits (the message shows a key found and a module
            expected), or several fit equally well.
    """
    modules = sorted({m for k in tensors if (m := lora_module(k)) is not None})
    model_names = {name for name, _ in model.named_modules() if name}
    if not modules or any(m in model_names for m in modules):
        # Names that already fit are kept; any that do not are reported when the adapter is injected.
        return tensors, None
    mapping = _find_mapping(modules, model_names)
    components = sorted({m.split(".", 1)[0] for m in modules})
    if mapping is None and len(components) > 1:
        fits = [c for c in components if _find_mapping([m for m in modules if m.split(".", 1)[0] == c], model_names)]
        if fits:
            raise CheckpointError(
                f"{source}: the file adapts several models, got LoRA under {short_keys([f'{c}.' for c in components])} "
                f"of which only {short_keys([f'{c}.' for c in fits])} fits this model. Keep only that part's keys "
                f"(e.g. MIDI-3D: `save_custom_adapter` without image-encoder LoRA)."
            )
    if mapping is None:
        raise CheckpointError(
            f"{source}: the adapter's modules are not in this model under any prefix, got keys like "
            f"`{modules[0]}.lora_A.weight` while the model's linears are named like `{example_linear(model)}`. "
            f"Load it into the model it was trained on, or rename its keys (see docs/interop.md)."
        )
    if isinstance(mapping, list):
        choices = ", ".join(f"`{s or '(none)'}` -> `{a or '(none)'}`" for s, a in mapping[:4])
        raise CheckpointError(
            f"{source}: the adapter's keys fit this model under several prefixes, got {choices}. "
            f"Load it into the submodule it was trained on (e.g. `model.backbone`)."
        )
    strip, add = mapping
    renamed = {}
    for key, value in tensors.items():
        if key.startswith(f"{PROMPT_ATTR}."):
            renamed[key] = value
        elif not key.startswith(strip):
            raise CheckpointError(
                f"{source}: key outside the adapter's common prefix `{strip}`, got `{key}`. "
                f"Keep only one model's adapter in the file."
            )
        else:
            renamed[f"{add}{key[len(strip):]}"] = value
    return renamed, f"mapped key prefix `{strip or '(none)'}` to the model's `{add or '(none)'}`"


def example_linear(model: nn.Module) -> str:
    """The name of the model's first linear layer (for messages)."""
    for name, module in model.named_modules():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if isinstance(base, nn.Linear) and name:
            return name
    return "(no linear layer)"


def describe_key_mismatch(found: Iterable[str], expected: Iterable[str]) -> str:
    """One phrase naming a found key and an expected key, and the prefix and suffix that differ."""
    found, expected = sorted(found), sorted(expected)
    if not found or not expected:
        return ""
    a, b = found[0], expected[0]
    head = len(_common_prefix(a, b))
    tail = len(_common_prefix(a[head:][::-1], b[head:][::-1]))
    def part(text: str) -> str:
        return f"`{text}`" if text else "nothing"

    return f"found `{a}` with {part(a[head:len(a) - tail])} where `{b}` has {part(b[head:len(b) - tail])}"


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
