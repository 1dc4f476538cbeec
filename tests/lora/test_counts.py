"""Trainable parameter counts of every PTv3 preset equal the closed form on SceneSplat's and Pointcept's configs."""

from __future__ import annotations

import pytest
import torch

from engine.lora import PTV3_PRESETS, get_lora_parameters, inject_lora_with_preset, lora_summary
from engine.models.ptv3 import POINTCEPT_DEFAULT_CONFIG, SCENESPLAT_CONFIG, PointTransformerV3

HIDDEN = 32
ROLE_SHAPES = {"qkv": (1, 3), "proj": (1, 1), "fc1": (1, 4), "fc2": (4, 1)}  # (in, out) in units of C
GROUP_ROLES = {"attn": ("qkv", "proj"), "mlp": ("fc1", "fc2")}


def _stages(cfg: dict, which: str) -> list[tuple[int, int]]:
    """(channels, depth) of the encoder or decoder stages of a PTv3 config."""
    if which == "enc":
        return list(zip(cfg["enc_channels"], cfg["enc_depths"]))
    return list(zip(cfg["dec_channels"], cfg["dec_depths"]))


def closed_form(cfg: dict, preset: str) -> int:
    """Sum over targeted linears of r * (in + out), plus prompt MLPs (in*32 + 32 + 32*out + out)."""
    p = PTV3_PRESETS[preset]
    enc, dec = _stages(cfg, "enc"), _stages(cfg, "dec")
    chosen = {"last_two_encoder": enc[-2:], "all_encoder": enc, "all": enc + dec, "decoder": dec}[p.stages]
    roles = [role for g in p.target_modules for role in GROUP_ROLES[g]]
    total = 0
    for c, depth in chosen:
        for role in roles:
            i, o = ROLE_SHAPES[role]
            total += depth * p.r * (i * c + o * c)
            if p.enable_prompt:
                total += i * c * HIDDEN + HIDDEN + HIDDEN * o * c + o * c
    return total


@pytest.mark.parametrize("config_name, cfg", [("scenesplat", SCENESPLAT_CONFIG), ("pointcept", POINTCEPT_DEFAULT_CONFIG)])
@pytest.mark.parametrize("preset", sorted(PTV3_PRESETS))
def test_preset_trainable_count_matches_closed_form(config_name, cfg, preset):
    # The meta device makes the full-size models free to build; counting needs no storage.
    with torch.device("meta"):
        model = PointTransformerV3(**{**cfg, "sparse_conv_backend": "torch", "attention_backend": "sdpa"})
        base_total = sum(p.numel() for p in model.parameters())
        inject_lora_with_preset(model, preset)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = closed_form(cfg, preset)
    assert trainable == expected
    assert sum(p.numel() for p in get_lora_parameters(model)) == expected
    summary = lora_summary(model)
    assert summary["lora_params"] == expected
    assert summary["total_params"] == base_total + expected


def test_minimal_preset_takes_the_last_two_stages_of_each_layout():
    with torch.device("meta"):
        four = PointTransformerV3(**{**SCENESPLAT_CONFIG, "sparse_conv_backend": "torch", "attention_backend": "sdpa"})
        five = PointTransformerV3(**{**POINTCEPT_DEFAULT_CONFIG, "sparse_conv_backend": "torch",
                                     "attention_backend": "sdpa"})
        inject_lora_with_preset(four, "minimal")
        inject_lora_with_preset(five, "minimal")
    assert four.lora3d_targets["default"]["stages"] == ["enc2", "enc3"]
    assert five.lora3d_targets["default"]["stages"] == ["enc3", "enc4"]
    # SceneSplat: enc2 has 2 blocks, enc3 has 6: 8 blocks x (qkv + proj).
    assert len(four.lora3d_targets["default"]["modules"]) == 16


@pytest.mark.parametrize(
    "config, expected, warns",
    [
        # reference midi.md §1.4: LoraConfig(r=16, to_q/to_k/to_v/to_out.0) on every attention module.
        ({"cross_attention_dim": 768, "cross_attention_2_dim": 1024}, 14_966_784, False),  # MIDI DiT
        ({}, 10_321_920, True),  # TripoSG DiT: no attn2_2, so `cross2` is ignored with a warning
    ],
)
def test_dit_midi_default_matches_the_reference_counts(config, expected, warns):
    from engine.models.dit import TripoSGDiTModel

    with torch.device("meta"):
        model = TripoSGDiTModel(**config)
        if warns:
            with pytest.warns(UserWarning, match="no `attn2_2` modules"):
                inject_lora_with_preset(model, "midi_default")
        else:
            inject_lora_with_preset(model, "midi_default")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert lora_summary(model)["lora_params"] == expected
