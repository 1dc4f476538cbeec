"""Provides LoRA injection (PEFT layers on resolved targets), freezing, parameter lists and adapter switching.

The LoRA layers are PEFT's own (`peft.inject_adapter_in_model` on a plain ``nn.Module``), so adapters
save in PEFT's layout and diffusers/PEFT loaders accept them. What was targeted is recorded on the model
as ``model.lora3d_targets[adapter_name]`` (a JSON-serialisable dict) instead of being re-derived later.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from peft.functional import cast_adapter_dtype, delete_adapter, set_adapter
from peft.tuners.lora import LoraLayer
from torch import nn

from engine.errors import ProfileError
from engine.lora.config import BIAS_MODES, LORA_PARAM_PARTS, build_lora_config
from engine.lora.presets import DiTLoraPreset, get_preset
from engine.lora.prompt import PROMPT_HIDDEN, get_prompt_bank, prompt_parameters
from engine.lora.prompt import enable_prompt as attach_prompt_mlps
from engine.lora.spec import DiTAttention, LoraSpec, PTv3Stages, Targets, tuple_or_none
from engine.lora.targets import DIT_PROJECTIONS

TARGETS_ATTR = "lora3d_targets"
"""Model attribute holding ``{adapter_name: record}`` of every injected adapter."""

BIAS_ATTR = "lora3d_bias"
"""Model attribute holding the bias mode chosen by `mark_only_lora_as_trainable`."""


def iter_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """Yield ``(name, layer)`` for every PEFT LoRA layer in the model."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def list_adapters(model: nn.Module) -> list[str]:
    """Return the adapter names injected into the model, in injection order."""
    return list(getattr(model, "peft_config", {}) or {})


def get_active_adapter(model: nn.Module) -> str | None:
    """Return the active adapter's name, or None when the model carries no LoRA layer."""
    for _, layer in iter_lora_layers(model):
        return layer.active_adapters[0] if layer.active_adapters else None
    return None


def _check_adapter_name(model: nn.Module, adapter_name: str) -> None:
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ProfileError(
            f"`adapter_name`: must be a non-empty name without dots, got {adapter_name!r}. Use e.g. 'default'."
        )
    bank = get_prompt_bank(model)
    taken = [*list_adapters(model), *(bank.adapters if bank is not None else [])]
    if adapter_name in taken:
        raise ProfileError(
            f"`adapter_name`: an adapter named {adapter_name!r} is already in the model (or merged into it), "
            f"got {adapter_name!r}. Pick another name; taken: {sorted(set(taken))!r}."
        )


def inject_lora_layers(
    model: nn.Module, config: LoraConfig, adapter_name: str, record: dict[str, Any]
) -> nn.Module:
    """Inject PEFT LoRA layers for `config` and record what was targeted.

    Args:
        model: any ``nn.Module``; changed in place.
        config: PEFT LoRA config, normally with full module names as `target_modules`.
        adapter_name: name of the new adapter; it becomes the active one.
        record: JSON-serialisable description stored as ``model.lora3d_targets[adapter_name]``;
            the injected module names are added under ``"modules"``.

    Returns:
        The same model.
    """
    _check_adapter_name(model, adapter_name)
    with warnings.catch_warnings():
        # Several adapters on one base are intended (one per task); PEFT warns about it.
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    # As PeftModel does by default: LoRA weights of an fp16/bf16 base train in float32.
    cast_adapter_dtype(model, adapter_name, autocast_adapter_dtype=True)
    injected = []
    for name, layer in iter_lora_layers(model):
        if adapter_name in layer.lora_A:
            injected.append(name)
            # PEFT builds the new dropout/A/B in training mode; an eval-mode model must stay deterministic.
            training = layer.get_base_layer().training
            for part in (layer.lora_dropout, layer.lora_A, layer.lora_B):
                part[adapter_name].train(training)
    records = dict(getattr(model, TARGETS_ATTR, {}) or {})
    records[adapter_name] = {**record, "adapter_name": adapter_name, "modules": injected}
    setattr(model, TARGETS_ATTR, records)
    set_active_adapter(model, adapter_name)
    # PEFT freezes every non-"lora_" parameter on injection, which includes earlier prompt MLPs.
    for param in prompt_parameters(model):
        param.requires_grad_(True)
    return model


def inject_targets(
    model: nn.Module,
    targets: Targets,
    r: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    adapter_name: str = "default",
    enable_prompt: bool = False,
    preset: str | None = None,
) -> nn.Module:
    """Inject PEFT LoRA layers on resolved targets (every injection in lora3d comes through here).

    Returns:
        The same model; what was targeted is recorded as ``model.lora3d_targets[adapter_name]``.
    """
    config = build_lora_config(targets.modules, r, lora_alpha, lora_dropout)
    record: dict[str, Any] = {
        **targets.record,
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": float(lora_dropout),
        "enable_prompt": bool(enable_prompt),
    }
    if preset is not None:
        record["preset"] = preset
    inject_lora_layers(model, config, adapter_name, record)
    if enable_prompt:
        shapes = enable_prompt_for(model, adapter_name)
        model.lora3d_targets[adapter_name]["prompt"] = {"hidden": PROMPT_HIDDEN, "shapes": shapes}
    return model


def apply_lora_spec(model: nn.Module, spec: LoraSpec, adapter_name: str = "default") -> nn.Module:
    """Prepare a frozen base for training per `spec`: inject and mark trainable what the spec says.

    `lora`: LoRA (and prompts) on the spec's targets, plus `trainable_modules` in full; everything else
    frozen. Without targets only `trainable_modules` train and nothing is injected (linear probing: a new
    head on a frozen base). `full`: every parameter trains and nothing is injected.
    """
    if spec.method == "full":
        return model.requires_grad_(True)
    if spec.targets is None:
        if not spec.trainable_modules:
            raise ProfileError("`lora`: a LoRA spec needs targets, got none. Set `lora.target_modules`.")
        model.requires_grad_(False)
        for name in spec.trainable_modules:
            model.get_submodule(name).requires_grad_(True)
        return model
    inject_targets(model, spec.targets.resolve(model), spec.r, spec.alpha, spec.dropout, adapter_name,
                   spec.enable_prompt, spec.preset)
    mark_only_lora_as_trainable(model)
    for name in spec.trainable_modules:
        model.get_submodule(name).requires_grad_(True)
    return model


def inject_lora_to_ptv3(
    model: nn.Module,
    r: int = 8,
    lora_alpha: float = 8,
    target_modules: Sequence[str] = ("attn",),
    enable_prompt: bool = False,
    encoder_only: bool = True,
    target_stages: Iterable[int | str] | None = None,
    lora_dropout: float = 0.0,
    adapter_name: str = "default",
) -> nn.Module:
    """Inject LoRA into a PTv3 backbone (the PointLoRA guide's API).

    Args:
        model: a `PointTransformerV3` or a model wrapping one (e.g. under ``backbone.``).
        r: LoRA rank.
        lora_alpha: LoRA alpha; the update is scaled by ``lora_alpha / r``.
        target_modules: ``["attn"]`` (attn.qkv + attn.proj), ``["mlp"]`` (fc1 + fc2) or both.
        enable_prompt: add PointLoRA prompt MLPs (one per stage and linear role, zero-initialised).
        encoder_only: skip the decoder stages.
        target_stages: ``None`` for all stages; ints are encoder stage indices (also the same decoder
            index when `encoder_only` is False); ``"enc3"``/``"dec0"`` name a stage exactly.
        lora_dropout: dropout on the LoRA branch input.
        adapter_name: name of this adapter (several may share one base).

    Returns:
        The same model, with LoRA layers in place and the rest frozen.

    Raises:
        ProfileError: bad hyper-parameters, unknown groups or stages the model does not have.
    """
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    rule = PTv3Stages(tuple(target_modules), encoder_only, tuple_or_none(target_stages))
    return inject_targets(model, rule.resolve(model), r, lora_alpha, lora_dropout, adapter_name, enable_prompt)


def enable_prompt_for(model: nn.Module, adapter_name: str) -> dict[str, dict[str, list[int]]]:
    """Add PointLoRA prompt MLPs to the linears of an injected PTv3 adapter (see `engine.lora.prompt`)."""
    record = getattr(model, TARGETS_ATTR, {}).get(adapter_name)
    if record is None or record.get("family") != "ptv3":
        raise ProfileError(
            f"`enable_prompt`: prompt MLPs need a PTv3 adapter, got adapter {adapter_name!r} of "
            f"{None if record is None else record.get('family')!r}. Use `inject_lora_to_ptv3`."
        )
    roles = {name: tuple(role) for name, role in record["roles"].items()}
    return attach_prompt_mlps(model, roles, adapter_name)


def inject_lora_to_dit(
    model: nn.Module,
    r: int = 16,
    lora_alpha: float = 16,
    lora_dropout: float = 0.1,
    blocks: Iterable[int] | None = None,
    attention_kinds: Sequence[str] = ("self", "cross", "cross2"),
    target_modules: Sequence[str] = DIT_PROJECTIONS,
    adapter_name: str = "default",
) -> nn.Module:
    """Inject LoRA into the attention projections of a TripoSG/MIDI DiT.

    Args:
        model: a `TripoSGDiTModel` or a model wrapping one.
        r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: dropout on the LoRA branch input.
        blocks: exact block indices (``None`` = all blocks).
        attention_kinds: ``"self"`` (attn1), ``"cross"`` (attn2), ``"cross2"`` (attn2_2, MIDI only).
        target_modules: subset of ``to_q, to_k, to_v, to_out.0``. TripoSG's processors treat to_q/to_k/to_v
            as one head-interleaved qkv, so LoRA on ``to_q`` alone touches q, k and v of some heads.
        adapter_name: name of this adapter.

    Returns:
        The same model, with LoRA layers in place and the rest frozen.
    """
    if isinstance(attention_kinds, str):
        attention_kinds = [attention_kinds]
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    rule = DiTAttention(tuple_or_none(blocks), tuple(attention_kinds), tuple(target_modules))
    return inject_targets(model, rule.resolve(model), r, lora_alpha, lora_dropout, adapter_name)


def inject_lora_with_preset(model: nn.Module, preset: str, **overrides: Any) -> nn.Module:
    """Inject LoRA with a named preset; keyword overrides replace the preset's values.

    Args:
        model: a PTv3 backbone for `minimal`, `standard`, `full`, `decoder_only`; a DiT for
            `midi_default`, `mi_blocks`, `self_only`.
        preset: preset name (see `engine.lora.presets`).
        **overrides: any keyword of `inject_lora_to_ptv3` / `inject_lora_to_dit`.

    Returns:
        The same model.
    """
    chosen = get_preset(preset)
    inject = inject_lora_to_dit if isinstance(chosen, DiTLoraPreset) else inject_lora_to_ptv3
    allowed = [p for p in inspect.signature(inject).parameters if p != "model"]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ProfileError(
            f"`lora`: unknown override for preset {chosen.name!r}, got {unknown!r}. Use keys of {allowed!r}."
        )
    kwargs = {**chosen.resolve(model), **overrides}
    inject(model, **kwargs)
    model.lora3d_targets[kwargs.get("adapter_name", "default")]["preset"] = chosen.name
    return model


def is_lora_parameter_name(name: str) -> bool:
    """True for PEFT LoRA parameter names (``...lora_A.<adapter>.weight``)."""
    return any(part in LORA_PARAM_PARTS for part in name.split("."))


def _bias_names(model: nn.Module, bias: str) -> set[str]:
    if bias == "all":
        return {n for n, _ in model.named_parameters() if n.endswith("bias")}
    if bias == "lora_only":
        return {
            f"{name}.base_layer.bias" for name, layer in iter_lora_layers(model)
            if getattr(layer.get_base_layer(), "bias", None) is not None
        }
    return set()


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> nn.Module:
    """Freeze everything except LoRA weights, prompt MLPs and the chosen biases.

    Args:
        model: an injected model.
        bias: ``"none"``, ``"all"`` (every bias trains) or ``"lora_only"`` (biases of adapted linears).

    Returns:
        The same model.
    """
    if bias not in BIAS_MODES:
        raise ProfileError(f"`bias`: unknown bias mode, got {bias!r}. Use one of {list(BIAS_MODES)!r}.")
    biases = _bias_names(model, bias)
    prompt_ids = {id(p) for p in prompt_parameters(model)}
    for name, param in model.named_parameters():
        param.requires_grad_(is_lora_parameter_name(name) or id(param) in prompt_ids or name in biases)
    # PEFT's state-dict helpers read `bias` from the config: keep saved adapters in step with training.
    for config in (getattr(model, "peft_config", {}) or {}).values():
        config.bias = bias
    setattr(model, BIAS_ATTR, bias)
    return model


def get_lora_parameters(model: nn.Module, adapter_name: str | None = None) -> list[nn.Parameter]:
    """Return the parameters to optimise: LoRA A/B, prompt MLPs and the biases chosen for training.

    Args:
        model: an injected model.
        adapter_name: only this adapter's LoRA and prompt parameters (None = every adapter).
    """
    bank = get_prompt_bank(model)
    prompt_ids = set()
    if bank is not None:
        for name, mlps in bank.adapters.items():
            # A merged adapter's prompt is part of the base now, not something to optimise.
            if name not in bank.always and (adapter_name is None or name == adapter_name):
                prompt_ids |= {id(p) for p in mlps.parameters()}
    biases = _bias_names(model, getattr(model, BIAS_ATTR, "none"))
    params = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        is_lora = is_lora_parameter_name(name) and (adapter_name is None or adapter_name in parts)
        if is_lora or id(param) in prompt_ids or name in biases:
            params.append(param)
    return params


def set_active_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make one adapter (LoRA layers and prompt MLPs) the active one; the others stop contributing.

    PEFT also freezes the inactive adapters' LoRA weights (``requires_grad=False``).

    Raises:
        ProfileError: the model has no adapter of that name; the message lists the present ones.
    """
    present = list_adapters(model)
    if adapter_name not in present:
        raise ProfileError(
            f"`adapter_name`: no adapter named {adapter_name!r} in this model, got {adapter_name!r}. "
            f"Use one of {present!r}."
        )
    set_adapter(model, adapter_name)
    bank = get_prompt_bank(model)
    if bank is not None:
        bank.active = [adapter_name]
    return model


def remove_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Delete one adapter's LoRA weights, prompt MLPs and record; the last one restores plain linears."""
    if adapter_name not in list_adapters(model):
        return model
    remaining = [a for a in list_adapters(model) if a != adapter_name]
    if remaining:
        with warnings.catch_warnings():
            # PEFT warns that it picked a new active adapter; the choice is made explicit below.
            warnings.filterwarnings("ignore", message=".*which is now deleted.*")
            new_active = delete_adapter(model, adapter_name, prefix="lora_")
        set_active_adapter_names = new_active or remaining[:1]
    else:
        for name, layer in list(iter_lora_layers(model)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
        set_active_adapter_names = []
    del model.peft_config[adapter_name]
    if not model.peft_config:
        del model.peft_config
    getattr(model, TARGETS_ATTR, {}).pop(adapter_name, None)
    bank = get_prompt_bank(model)
    if bank is not None and adapter_name in bank.adapters:
        del bank.adapters[adapter_name]
    if set_active_adapter_names:
        set_active_adapter(model, set_active_adapter_names[0])
    return model
