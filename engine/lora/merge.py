"""Provides merging: fold the active adapter's LoRA deltas into the base linears and unwrap PEFT's layers."""

from __future__ import annotations

import logging

from torch import nn

from engine.errors import CheckpointError
from engine.lora.inject import TARGETS_ATTR, get_active_adapter, iter_lora_layers
from engine.lora.prompt import PROMPT_ATTR, get_prompt_bank

MERGED_ATTR = "lora3d_merged"
"""Model attribute describing a merge: adapter folded and prompt tensors kept."""

_log = logging.getLogger(__name__)


def merge_lora_weights(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights and put the original linears back.

    Afterwards ``model.state_dict()`` has the base model's original key names (no ``base_layer`` and no
    ``lora_`` keys) and loads strictly into a plain model. Other adapters are dropped. PointLoRA prompt
    MLPs cannot be folded into a linear (they are non-linear), so they are kept under
    ``lora3d_prompt.*`` and listed in ``model.lora3d_merged["prompt_keys"]``.

    Args:
        model: an injected model; changed in place.

    Returns:
        The same model.

    Raises:
        CheckpointError: a merged weight is NaN or infinite (PEFT's `safe_merge` checks each layer before
            changing it); the model is then partly merged and must be rebuilt.
    """
    active = get_active_adapter(model)
    layers = list(iter_lora_layers(model))
    if active is None:
        _log.warning("merge_lora_weights: the model carries no LoRA layers; nothing merged")
        return model
    for name, layer in layers:
        if active in layer.lora_A and not layer.merged:
            try:
                layer.merge(safe_merge=True, adapter_names=[active])
            except ValueError as exc:  # PEFT's safe_merge: the merged weights are not finite
                raise CheckpointError(
                    f"{name}: merging adapter {active!r} gives NaN or infinite weights, got {str(exc)[:120]!r}. "
                    "The adapter or the base is broken (a diverged run, or an fp16 base overflowing): merge "
                    "another checkpoint, or load base and adapter separately."
                ) from None
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    record = (getattr(model, TARGETS_ATTR, {}) or {}).get(active, {})
    for attr in ("peft_config", TARGETS_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)
    bank = get_prompt_bank(model)
    prompt_keys: list[str] = []
    if bank is not None:
        for adapter in [a for a in bank.adapters if a != active and a not in bank.always]:
            del bank.adapters[adapter]
        bank.active = []
        if active in bank.adapters:
            # The prompt is now part of the base model: it runs whatever adapter is injected later.
            bank.always = [*bank.always, active]
        if bank.adapters:
            prompt_keys = [f"{PROMPT_ATTR}.{k}" for k in bank.state_dict()]
        else:
            delattr(model, PROMPT_ATTR)
    setattr(
        model,
        MERGED_ATTR,
        {"adapter_name": active, "modules": len(layers), "record": record, "prompt_keys": prompt_keys},
    )
    if prompt_keys:
        _log.info(
            "merge_lora_weights: folded %d LoRA layers of %r; kept %d prompt tensors under `%s`",
            len(layers), active, len(prompt_keys), PROMPT_ATTR,
        )
    else:
        _log.info("merge_lora_weights: folded %d LoRA layers of %r", len(layers), active)
    return model
