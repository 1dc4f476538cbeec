"""Merging: merged output equals unmerged, original key names, strict load into a plain model, prompt kept."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.errors import ProfileError
from engine.lora import inject_lora_to_dit, inject_lora_to_ptv3, merge_lora_weights, set_active_adapter
from engine.models.dit import TripoSGDiTModel
from tests.lora.conftest import TINY_DIT, ptv3_input, randomise_lora, run_ptv3, standin_small, tiny_ptv3


def test_merged_real_ptv3_equals_unmerged_and_loads_strictly():
    base = tiny_ptv3()
    plain_keys = list(base.state_dict())
    data = ptv3_input()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=4, lora_alpha=8, target_modules=["attn", "mlp"],
                                encoder_only=False)
    randomise_lora(model)
    unmerged = run_ptv3(model, data)
    assert (unmerged - run_ptv3(base, data)).abs().max() > 1e-4
    merge_lora_weights(model)
    torch.testing.assert_close(run_ptv3(model, data), unmerged, rtol=1e-5, atol=1e-5)
    state = model.state_dict()
    assert list(state) == plain_keys
    fresh = tiny_ptv3(seed=5)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(run_ptv3(fresh, data), unmerged, rtol=1e-5, atol=1e-5)
    assert model.lora3d_merged["prompt_keys"] == []


def test_merge_keeps_prompt_modules_and_reports_them(feats):
    base = standin_small().eval()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=2, enable_prompt=True, target_modules=["attn", "mlp"])
    randomise_lora(model)
    unmerged = model(feats)
    merge_lora_weights(model)
    torch.testing.assert_close(model(feats), unmerged, rtol=1e-5, atol=1e-5)
    state = model.state_dict()
    extra = sorted(set(state) - set(base.state_dict()))
    assert extra == sorted(model.lora3d_merged["prompt_keys"])
    assert extra and all(k.startswith("lora3d_prompt.") for k in extra)
    assert not any("lora_A" in k or "base_layer" in k for k in state)
    # Without the prompt tensors the rest loads strictly into the plain model.
    base.load_state_dict({k: v for k, v in state.items() if k not in extra}, strict=True)


def test_merge_folds_only_the_active_adapter(feats):
    model = standin_small().eval()
    inject_lora_to_ptv3(model, r=2, adapter_name="a")
    randomise_lora(model, seed=1)
    inject_lora_to_ptv3(model, r=2, adapter_name="b")
    randomise_lora(model, seed=2)
    set_active_adapter(model, "a")
    out_a = model(feats)
    merge_lora_weights(model)
    torch.testing.assert_close(model(feats), out_a, rtol=1e-5, atol=1e-5)
    assert model.lora3d_merged["adapter_name"] == "a"


@pytest.mark.parametrize("blocks", [None, [2, 7]])
def test_merged_dit_equals_unmerged(blocks):
    torch.manual_seed(0)
    base = TripoSGDiTModel(**TINY_DIT).eval()
    g = torch.Generator().manual_seed(1)
    x = {
        "hidden_states": torch.randn(1, 5, 4, generator=g),
        "timestep": torch.tensor([300.0]),
        "encoder_hidden_states": torch.randn(1, 3, 6, generator=g),
        "encoder_hidden_states_2": torch.randn(1, 4, 5, generator=g),
    }
    model = inject_lora_to_dit(copy.deepcopy(base), r=4, blocks=blocks)
    randomise_lora(model)
    unmerged = model(**x).sample
    merge_lora_weights(model)
    torch.testing.assert_close(model(**x).sample, unmerged, rtol=1e-5, atol=1e-5)
    base.load_state_dict(model.state_dict(), strict=True)


def test_a_merged_prompt_keeps_running_under_a_new_adapter_and_stays_frozen(feats):
    from engine.lora import get_lora_parameters, mark_only_lora_as_trainable

    model = inject_lora_to_ptv3(standin_small().eval(), r=2, enable_prompt=True, target_stages=[4])
    randomise_lora(model)
    merged_out = merge_lora_weights(model)(feats)
    with pytest.raises(ProfileError, match="already in the model \\(or merged into it\\)"):
        inject_lora_to_ptv3(model, r=2, target_stages=[3])
    inject_lora_to_ptv3(model, r=2, target_stages=[3], adapter_name="next", enable_prompt=True)
    mark_only_lora_as_trainable(model)
    torch.testing.assert_close(model(feats), merged_out, rtol=0, atol=0)
    kept = list(model.lora3d_prompt.adapters["default"].parameters())
    assert kept and not any(p.requires_grad for p in kept)
    assert {id(p) for p in kept}.isdisjoint(id(p) for p in get_lora_parameters(model))
