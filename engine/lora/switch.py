"""Provides `AdapterSet`: one base model in memory, several adapters loaded into it once, switched per call.

Switching never reloads or copies the base: the LoRA layers of every adapter sit side by side in the same
modules (PEFT's multi-adapter layers), and `use(name)` only changes which one runs. `use(BASE)` turns the
LoRA layers (and PointLoRA prompt MLPs) off, so the base alone runs.

Modules an adapter trains in full next to its LoRA weights (a new segmentation head: the LoRA spec's
`trainable_modules`) are part of that adapter, not of the base: their values are kept per adapter and
copied into the module in place on every switch, so the module's parameters keep their storage
(`data_ptr`) and the base weights are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from engine.errors import ProfileError
from engine.lora.inject import iter_lora_layers, list_adapters, set_active_adapter
from engine.lora.prompt import get_prompt_bank

BASE = "base"
"""The name `AdapterSet.use` takes for the base model alone (no adapter)."""


class AdapterSet:
    """A base model and the adapters loaded into it, one active at a time.

    Args:
        model: the base model (frozen), without adapters yet.
        carried: names of modules each adapter trains in full (e.g. `("seg_head",)`); their values are
            switched with the adapter.

    Example:
        adapters = AdapterSet(model, carried=recipe.lora.trainable_modules)
        adapters.add("semseg", "runs/a/adapter", load=my_family_loader)
        for name in adapters.names:   # ["base", "semseg"]
            model = adapters.use(name)
    """

    def __init__(self, model: nn.Module, carried: Iterable[str] = ()) -> None:
        self.model = model
        self.carried = tuple(carried)
        self.paths: dict[str, Path | None] = {BASE: None}
        self._states: dict[str, dict[str, dict[str, torch.Tensor]]] = {BASE: self._snapshot()}
        self.active = BASE

    @property
    def names(self) -> list[str]:
        """`base` first, then the adapters in the order they were added."""
        return list(self._states)

    def _snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for name in self.carried:
            module = self.model.get_submodule(name)
            out[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return out

    def add(self, name: str, path: str | Path, load: Callable[[nn.Module, Path, str], object]) -> None:
        """Loads the adapter at `path` under `name` with `load(model, path, name)` (the family's loader).

        The loader starts from the base's carried modules, so an adapter that has no head of its own
        keeps the base's head rather than the previously loaded adapter's.

        Raises:
            ProfileError: `name` is taken (or is `base`).
        """
        if name in self._states:
            raise ProfileError(
                f"adapter name: {name!r} is taken, got {name!r}. Give each adapter its own name "
                f"(taken: {', '.join(self._states)})."
            )
        self.use(BASE)
        load(self.model, Path(path), name)
        self._states[name] = self._snapshot()
        self.paths[name] = Path(path)
        self.use(BASE)

    def use(self, name: str) -> nn.Module:
        """Makes `name` (an adapter, or `base`) the one that runs; returns the model.

        Raises:
            ProfileError: no adapter of that name was added.
        """
        if name not in self._states:
            raise ProfileError(
                f"adapter name: no adapter named {name!r}, got {name!r}. Use one of {', '.join(self._states)}."
            )
        layers = [layer for _, layer in iter_lora_layers(self.model)]
        bank = get_prompt_bank(self.model)
        if name == BASE:
            for layer in layers:
                layer.enable_adapters(False)
            if bank is not None:
                bank.active = []
        else:
            for layer in layers:
                layer.enable_adapters(True)
            if name in list_adapters(self.model):
                set_active_adapter(self.model, name)
        with torch.no_grad():
            for module_name, state in self._states[name].items():
                module = self.model.get_submodule(module_name)
                for key, value in module.state_dict().items():
                    value.copy_(state[key])  # in place: the module keeps its storage
        self.active = name
        return self.model


__all__ = ["BASE", "AdapterSet"]
