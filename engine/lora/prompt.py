"""Provides PointLoRA's prompt MLPs adapted to PTv3: one shared bypass MLP per stage and linear role.

PointLoRA (songw-zju/PointLoRA@82719f0:models/PointLoRA.py) adds ``gate * prompt_mlp(x)`` to the output
of every LoRA linear, with one ``Linear(C, 32) -> GELU -> Linear(32, out)`` shared by all blocks
(``prompt_qkv_mlp`` for every qkv, ``prompt_proj_mlp`` for every proj) and a fixed gate of 1.0.
PTv3 changes width per stage, so here each stage gets its own MLP per linear role (``qkv``, ``proj``,
``fc1``, ``fc2``), shared by the blocks of that stage. The output layer starts at zero, so an injected
model equals its base until the first optimiser step.

The bypass is a forward hook on the *base* ``nn.Linear`` inside PEFT's LoRA layer. PEFT's merge folds
``B @ A`` into that linear's weight and unwrapping puts the same linear back in place, hook included,
so merging keeps the prompt path intact. The MLPs live in ``model.lora3d_prompt`` (a `PromptBank`) and
are therefore saved, moved and deep-copied with the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PROMPT_ATTR = "lora3d_prompt"
"""Attribute (and state_dict prefix) of the prompt bank on the injected model."""

PROMPT_HIDDEN = 32
"""Hidden width of every prompt MLP (PointLoRA uses 32)."""


class PromptMLP(nn.Module):
    """``gate * up(GELU(down(x)))`` with ``up`` zero-initialised so the bypass starts at exactly zero.

    Args:
        in_features: width of the adapted linear's input.
        out_features: width of the adapted linear's output.
        hidden: bottleneck width.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = PROMPT_HIDDEN) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        # PointLoRA's gate is a fixed scalar 1.0 that never trains; kept for parity, not saved.
        self.register_buffer("gate", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.gate * self.up(self.act(self.down(x)))


class PromptBank(nn.Module):
    """All prompt MLPs of a model: ``adapters[adapter][stage][role]``, the active adapters, and the merged
    ones (``always``) whose prompts keep running because their LoRA deltas now live in the base weights."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.always: list[str] = []

    def lookup(self, adapter: str, stage: str, role: str) -> PromptMLP | None:
        """Return the MLP for one adapter, stage and role, or None if that adapter has none."""
        if adapter not in self.adapters:
            return None
        stages = self.adapters[adapter]
        if stage not in stages or role not in stages[stage]:
            return None
        return stages[stage][role]


class _PromptBypass:
    """Forward hook adding the active adapters' prompt output to a base linear's output.

    A plain object (not a closure) so that ``copy.deepcopy(model)`` re-points it at the copied bank.
    """

    def __init__(self, bank: PromptBank, stage: str, role: str) -> None:
        self.bank = bank
        self.stage = stage
        self.role = role

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (..., in)
        for adapter in (*self.bank.always, *self.bank.active):
            mlp = self.bank.lookup(adapter, self.stage, self.role)
            if mlp is not None:
                output = output + mlp(x.to(mlp.down.weight.dtype)).to(output.dtype)
        return output


def get_prompt_bank(model: nn.Module) -> PromptBank | None:
    """Return the model's prompt bank, or None when no adapter enabled the prompt."""
    bank = getattr(model, PROMPT_ATTR, None)
    return bank if isinstance(bank, PromptBank) else None


def _base_linear(module: nn.Module) -> nn.Linear:
    """Return the plain linear inside a PEFT LoRA layer (or the module itself)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    assert isinstance(base, nn.Linear), f"prompt target is not a linear layer: {type(base).__name__}"
    return base


def enable_prompt(
    model: nn.Module,
    roles: Mapping[str, tuple[str, str]],
    adapter_name: str = "default",
    hidden: int = PROMPT_HIDDEN,
) -> dict[str, dict[str, list[int]]]:
    """Add prompt MLPs for one adapter and hook them onto the adapted linears.

    Args:
        model: the model that already carries the LoRA layers.
        roles: full module name of each adapted linear -> (stage key such as ``"enc3"``, role).
        adapter_name: adapter the MLPs belong to; only active adapters' prompts run.
        hidden: bottleneck width of each MLP.

    Returns:
        ``{stage: {role: [in_features, out_features]}}`` of the MLPs created.
    """
    bank = get_prompt_bank(model)
    if bank is None:
        bank = PromptBank()
        setattr(model, PROMPT_ATTR, bank)
    modules = dict(model.named_modules())
    shapes: dict[str, dict[str, list[int]]] = {}
    per_adapter = nn.ModuleDict()
    for name, (stage, role) in roles.items():
        base = _base_linear(modules[name])
        shape = [base.in_features, base.out_features]
        known = shapes.setdefault(stage, {}).setdefault(role, shape)
        # NOTE: one MLP is shared by every block of a stage, which needs equal widths within the stage.
        assert known == shape, f"{name}: width {shape} differs from its stage's {known}"
        if stage not in per_adapter:
            per_adapter[stage] = nn.ModuleDict()
        if role not in per_adapter[stage]:
            # Like the LoRA weights, the MLPs of an fp16/bf16 base are kept in float32 (the hook casts).
            dtype = base.weight.dtype if base.weight.dtype in (torch.float32, torch.float64) else torch.float32
            mlp = PromptMLP(*shape, hidden=hidden).to(device=base.weight.device, dtype=dtype)
            per_adapter[stage][role] = mlp.train(base.training)
        if not any(isinstance(h, _PromptBypass) for h in base._forward_hooks.values()):
            base.register_forward_hook(_PromptBypass(bank, stage, role))
    bank.adapters[adapter_name] = per_adapter
    if adapter_name not in bank.active:
        bank.active = [adapter_name]
    return shapes


def prompt_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Return one adapter's prompt tensors keyed as in adapter files (``lora3d_prompt.<stage>.<role>...``)."""
    bank = get_prompt_bank(model)
    if bank is None or adapter_name not in bank.adapters:
        return {}
    return {
        f"{PROMPT_ATTR}.{key}": value.detach()
        for key, value in bank.adapters[adapter_name].state_dict().items()
    }


def prompt_parameters(model: nn.Module, include_merged: bool = False) -> list[nn.Parameter]:
    """Return the prompt MLP parameters of every adapter; merged ones (now part of the base) only on request."""
    bank = get_prompt_bank(model)
    if bank is None:
        return []
    return [
        p for name, mlps in bank.adapters.items() if include_merged or name not in bank.always
        for p in mlps.parameters()
    ]
