"""Injection: the injected model equals its base at step 0, gradients reach every LoRA parameter, freezing, adapters."""

from __future__ import annotations

import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer

from engine.errors import ProfileError
from engine.lora import (
    get_lora_parameters,
    inject_lora_to_dit,
    inject_lora_to_ptv3,
    inject_lora_with_preset,
    list_adapters,
    mark_only_lora_as_trainable,
    remove_adapter,
    set_active_adapter,
)
from engine.models.dit import TripoSGDiTModel
from tests.lora.conftest import (
    TINY_DIT,
    Wrapped,
    ptv3_input,
    randomise_lora,
    run_ptv3,
    standin_small,
    tiny_ptv3,
)


def test_injected_standin_equals_base_at_step_zero_with_prompt(feats):
    base = standin_small().eval()
    expected = base(feats)
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=4, lora_alpha=8, target_modules=["attn", "mlp"],
                                enable_prompt=True, encoder_only=False)
    assert model.lora3d_targets["default"]["enable_prompt"] is True
    torch.testing.assert_close(model(feats), expected, rtol=0, atol=0)
    # After "training" the adapter changes the output, so the check above is not vacuous.
    randomise_lora(model)
    assert (model(feats) - expected).abs().max() > 1e-3


def test_injected_real_ptv3_equals_base_at_step_zero():
    base = tiny_ptv3()
    data = ptv3_input()
    expected = run_ptv3(base, data)
    model = inject_lora_with_preset(copy.deepcopy(base), "full")
    torch.testing.assert_close(run_ptv3(model, data), expected, rtol=0, atol=0)


def test_gradient_reaches_every_lora_and_prompt_parameter(feats):
    model = inject_lora_to_ptv3(standin_small(), r=2, target_modules=["attn", "mlp"], enable_prompt=True,
                                encoder_only=False, lora_dropout=0.1)
    mark_only_lora_as_trainable(model)
    params = dict(model.named_parameters())
    lora = {n for n, p in params.items() if p in set(get_lora_parameters(model))}
    # Step 0: B and the prompt output layers are zero, so only they can receive a non-zero gradient.
    model.train()
    model(feats).square().mean().backward()
    for name in lora:
        assert params[name].grad is not None, name
    assert all(params[n].grad.abs().sum() > 0 for n in lora if "lora_B" in n or ".up." in n)
    # After a step every LoRA parameter (A, B, both prompt layers) gets a non-zero gradient.
    randomise_lora(model)
    model.zero_grad()
    model(feats).square().mean().backward()
    zero = [n for n in lora if params[n].grad is None or params[n].grad.abs().sum() == 0]
    assert zero == []
    frozen_with_grad = [n for n, p in params.items() if n not in lora and p.grad is not None]
    assert frozen_with_grad == []


@pytest.mark.parametrize("bias, extra", [("none", 0), ("lora_only", 2 * (8 + 8)), ("all", None)])
def test_mark_only_lora_as_trainable_bias_modes(bias, extra):
    model = inject_lora_to_ptv3(standin_small(), r=2, target_stages=[0])
    for p in model.parameters():
        p.requires_grad_(True)
    mark_only_lora_as_trainable(model, bias=bias)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora_count = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if extra is None:
        biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
        assert count == lora_count + biases
    else:
        # enc0 (C=8): qkv bias 24 + proj bias 8 = 32.
        assert count == lora_count + (32 if bias == "lora_only" else 0)
    assert {id(p) for p in get_lora_parameters(model)} == {
        id(p) for n, p in model.named_parameters() if n in trainable
    }
    with pytest.raises(ProfileError, match="unknown bias mode"):
        mark_only_lora_as_trainable(model, bias="some")


def test_guide_defaults_and_wrapped_backbone():
    model = Wrapped(standin_small(), 8)
    inject_lora_to_ptv3(model)
    record = model.lora3d_targets["default"]
    assert (record["r"], record["lora_alpha"], record["target_modules"]) == (8, 8, ["attn"])
    assert record["stages"] == ["enc0", "enc1", "enc2", "enc3", "enc4"]
    layers = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert layers == record["modules"] and all(n.startswith("backbone.enc.") for n in layers)
    assert not model.head.weight.requires_grad


def test_preset_overrides_and_unknown_preset():
    model = inject_lora_with_preset(standin_small(), "minimal", r=2)
    record = model.lora3d_targets["default"]
    assert (record["preset"], record["r"], record["stages"]) == ("minimal", 2, ["enc3", "enc4"])
    with pytest.raises(ProfileError, match=r"unknown preset, got 'tiny'.*'decoder_only'.*'midi_default'"):
        inject_lora_with_preset(standin_small(), "tiny")
    with pytest.raises(ProfileError, match=r"unknown override for preset 'minimal', got \['rank'\]"):
        inject_lora_with_preset(standin_small(), "minimal", rank=2)
    with pytest.raises(ProfileError, match="needs a decoder"):
        inject_lora_with_preset(standin_small(decoder=False), "decoder_only")
    dec = inject_lora_with_preset(standin_small(), "decoder_only")
    assert dec.lora3d_targets["default"]["stages"] == ["dec0", "dec1", "dec2", "dec3"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"r": 0}, "`lora.r`: must be a positive integer, got 0"),
    ({"lora_alpha": -1}, "`lora.lora_alpha`"),
    ({"lora_dropout": 1.5}, "`lora.lora_dropout`"),
])
def test_bad_hyperparameters_are_profile_errors(kwargs, fragment):
    with pytest.raises(ProfileError, match=fragment.replace("`", ".")):
        inject_lora_to_ptv3(standin_small(), **kwargs)


def test_two_adapters_switch_by_name_and_prompt_follows(feats):
    model = standin_small().eval()
    base_out = model(feats)
    inject_lora_to_ptv3(model, r=2, adapter_name="seg", enable_prompt=True)
    randomise_lora(model, seed=1)
    inject_lora_to_ptv3(model, r=4, target_stages=[4], adapter_name="det")
    randomise_lora(model, seed=2)
    assert list_adapters(model) == ["seg", "det"]
    with pytest.raises(ProfileError, match=r"adapter named 'seg' is already in the model"):
        inject_lora_to_ptv3(model, adapter_name="seg")
    det = model(feats)
    set_active_adapter(model, "seg")
    seg = model(feats)
    assert (seg - det).abs().max() > 1e-3
    assert (seg - base_out).abs().max() > 1e-3
    set_active_adapter(model, "det")
    torch.testing.assert_close(model(feats), det)
    with pytest.raises(ProfileError, match=r"no adapter named 'x'.*\['seg', 'det'\]"):
        set_active_adapter(model, "x")
    remove_adapter(model, "det")
    torch.testing.assert_close(model(feats), seg)
    remove_adapter(model, "seg")
    torch.testing.assert_close(model(feats), base_out)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())


def test_deepcopy_of_prompted_model_uses_its_own_prompt(feats):
    model = inject_lora_to_ptv3(standin_small().eval(), r=2, enable_prompt=True)
    randomise_lora(model)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(feats), model(feats))
    with torch.no_grad():
        for p in clone.lora3d_prompt.parameters():
            p.zero_()
    assert (clone(feats) - model(feats)).abs().max() > 1e-4


def _dit_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(2, 5, TINY_DIT["in_channels"], generator=g),
        "timestep": torch.rand(2, generator=g) * 1000,
        "encoder_hidden_states": torch.randn(2, 3, TINY_DIT["cross_attention_dim"], generator=g),
        "encoder_hidden_states_2": torch.randn(2, 4, TINY_DIT["cross_attention_2_dim"], generator=g),
    }


def test_dit_injection_counts_equals_base_and_preset_blocks():
    torch.manual_seed(0)
    base = TripoSGDiTModel(**TINY_DIT).eval()
    x = _dit_inputs()
    expected = base(**x).sample
    model = inject_lora_with_preset(copy.deepcopy(base), "mi_blocks")
    names = model.lora3d_targets["default"]["modules"]
    assert sorted({int(n.split(".")[1]) for n in names}) == [8, 9, 10, 11, 12]
    # LoRA B is zero; the processor re-splits a fused qkv, so allow float rounding only.
    torch.testing.assert_close(model(**x).sample, expected, rtol=1e-6, atol=1e-6)
    # r=16 per block: attn1 q,k,v,out (8->8): 4*16*16; attn2 q (8,8), k/v (6->8), out; attn2_2 k/v (5->8).
    per_block = 16 * (4 * 16 + (16 + 2 * 14 + 16) + (16 + 2 * 13 + 16))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 5 * per_block
    randomise_lora(model)
    assert (model(**x).sample - expected).abs().max() > 1e-4
    self_only = inject_lora_to_dit(copy.deepcopy(base), r=2, attention_kinds=["self"], blocks=[0, 3])
    assert sorted(self_only.lora3d_targets["default"]["modules"]) == sorted(
        f"blocks.{b}.attn1.{p}" for b in (0, 3) for p in ("to_q", "to_k", "to_v", "to_out.0")
    )


def test_injecting_into_an_eval_model_keeps_lora_dropout_off(feats):
    model = inject_lora_to_ptv3(standin_small().eval(), r=2, lora_dropout=0.5)
    randomise_lora(model)
    torch.testing.assert_close(model(feats), model(feats), rtol=0, atol=0)
    model.train()
    assert (model(feats) - model(feats)).abs().max() > 0


def test_real_ptv3_with_gradient_checkpointing_trains_lora_and_prompt():
    model = inject_lora_to_ptv3(tiny_ptv3(), r=2, target_modules=["attn", "mlp"], enable_prompt=True,
                                target_stages=[2, 3])
    mark_only_lora_as_trainable(model)
    randomise_lora(model)
    model.train()
    model.gradient_checkpointing_enable()
    run_ptv3(model, ptv3_input()).square().mean().backward()
    params = get_lora_parameters(model)
    assert len(params) == 2 * 4 * 3 + 2 * 4 * 4  # enc2+enc3: 3 blocks x 4 linears x (A, B); 2 stages x 4 MLPs x 4
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_bf16_base_gets_float32_lora_and_prompt_weights(feats):
    model = standin_small().eval().to(torch.bfloat16)
    base_out = model(feats.bfloat16())
    inject_lora_to_ptv3(model, r=2, enable_prompt=True, target_stages=[4])
    assert {p.dtype for p in get_lora_parameters(model)} == {torch.float32}
    assert model.enc.enc4.block0.attn.qkv.base_layer.weight.dtype == torch.bfloat16
    out = model(feats.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, base_out, rtol=0, atol=0)
