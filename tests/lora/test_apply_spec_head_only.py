"""`apply_lora_spec` without targets: only `trainable_modules` train (linear probing); with neither it refuses."""

from __future__ import annotations

import pytest
from torch import nn

from engine.errors import ProfileError
from engine.lora import list_adapters
from engine.lora.inject import apply_lora_spec
from engine.lora.spec import LoraSpec


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).requires_grad_(True)


def test_no_targets_trains_only_the_named_modules_and_injects_nothing():
    model = apply_lora_spec(_model(), LoraSpec(method="lora", targets=None, trainable_modules=("2",)))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"2.weight", "2.bias"}
    assert list_adapters(model) == [] and not any(".lora_" in n for n, _ in model.named_parameters())


def test_no_targets_and_nothing_to_train_is_refused():
    with pytest.raises(ProfileError, match="a LoRA spec needs targets, got none. Set `lora.target_modules`"):
        apply_lora_spec(_model(), LoraSpec(method="lora", targets=None))
