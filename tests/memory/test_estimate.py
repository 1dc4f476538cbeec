"""The analytic estimate: exact parameter counts against real models, and monotonic in every knob."""

from __future__ import annotations

import pytest
import torch

from engine.families.midi.memory import dit_params
from engine.families.scenesplat.memory import describe_memory as describe_ptv3
from engine.lora.inject import apply_lora_spec
from engine.memory.estimate import BREAKDOWN_KEYS, estimate_description
from engine.memory.estimate import estimate_recipe as estimate_profile
from tests.memory.profiles import midi_profile, scenesplat_profile


def _counts(model: torch.nn.Module) -> tuple[int, int]:
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return frozen, trainable


@pytest.mark.parametrize("lora", [
    {},
    {"preset": "minimal"},
    {"target_modules": ["attn", "mlp"], "encoder_only": False, "r": 4, "enable_prompt": True},
])
def test_ptv3_counts_equal_the_injected_tiny_model(lora):
    profile = scenesplat_profile(6000, model={"backbone": "demo-tiny"}, lora=lora)
    model = apply_lora_spec(profile.family.build_model(profile), profile.lora)
    frozen, trainable = _counts(model)
    desc = describe_ptv3(profile)
    assert desc.frozen_params == frozen
    assert desc.lora_params + desc.other_trainable_params == trainable


@pytest.mark.parametrize("backbone", ["scenesplat", "pointcept"])
def test_ptv3_full_size_count_equals_the_meta_model(backbone):
    from engine.models.ptv3 import PointTransformerV3

    profile = scenesplat_profile(model={"backbone": backbone})
    with torch.device("meta"):
        backbone_model = PointTransformerV3(**profile.options.backbone)
    desc = describe_ptv3(profile)
    # The segmentation head trains (`model.train_head`), so the frozen part is exactly the backbone.
    assert desc.frozen_params == sum(p.numel() for p in backbone_model.parameters())


@pytest.mark.parametrize("config", [
    dict(num_attention_heads=16, width=2048, in_channels=64, num_layers=21, cross_attention_dim=768,
         use_cross_attention_2=True, cross_attention_2_dim=1024),
    dict(num_attention_heads=16, width=2048, in_channels=64, num_layers=21, cross_attention_dim=1024,
         use_cross_attention_2=False),
    dict(num_attention_heads=2, width=32, in_channels=8, num_layers=5, cross_attention_dim=16,
         use_cross_attention_2=True, cross_attention_2_dim=24),
])
def test_dit_count_equals_the_meta_model(config):
    from engine.models.dit import TripoSGDiTModel

    kwargs = {k: v for k, v in config.items() if k != "use_cross_attention_2"}
    with torch.device("meta"):
        model = TripoSGDiTModel(**kwargs)
    assert dit_params(config) == sum(p.numel() for p in model.parameters())


def test_dit_full_size_matches_the_published_size():
    # TripoSG's transformer safetensors: 1,439,556,160 parameters (reference/midi.md §1.2).
    config = dict(num_attention_heads=16, width=2048, in_channels=64, num_layers=21, cross_attention_dim=1024)
    assert dit_params(config) == 1_439_556_160


@pytest.mark.parametrize("lora", [{}, {"preset": "self_only", "r": 4},
                                  {"target_modules": ["to_q", "to_out.0"], "attention_kinds": ["cross"]}])
def test_dit_lora_count_equals_the_injected_tiny_model(lora):
    from engine.families.midi.memory import describe_memory

    profile = midi_profile(64, 2, lora=lora, model={"mi_blocks": [1]})
    model = apply_lora_spec(profile.family.build_model(profile), profile.lora)
    _, trainable = _counts(model)
    assert describe_memory(profile).lora_params == trainable


def _sweep(make, key, values):
    return [estimate_profile(make(v), device="cuda") for v in values]


@pytest.mark.parametrize("family", ["scenesplat", "midi"])
def test_monotonic_in_rank_batch_and_tokens(family):
    base = scenesplat_profile if family == "scenesplat" else midi_profile
    by_rank = _sweep(lambda r: base(lora={"r": r}), "r", [4, 8, 16, 32])
    by_batch = _sweep(lambda b: base(train={"batch_size": b}), "b", [1, 2, 4])
    if family == "scenesplat":
        by_tokens = _sweep(lambda n: scenesplat_profile(n), "n", [10_000, 40_000, 160_000])
    else:
        by_tokens = _sweep(lambda n: midi_profile(n), "n", [256, 1024, 4096])
    for series in (by_rank, by_batch, by_tokens):
        peaks = [e.estimate_bytes for e in series]
        assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    # Adapter weights grow linearly with the rank (the trainable head, if any, is a constant).
    lora = [e.breakdown["lora"] for e in by_rank]
    assert lora[2] - lora[1] == 2 * (lora[1] - lora[0]) > 0 and lora[3] - lora[2] == 2 * (lora[2] - lora[1])
    acts = [e.breakdown["activations"] for e in by_batch]
    assert acts[2] > 1.9 * acts[1] > 3.6 * acts[0]


@pytest.mark.parametrize("family", ["scenesplat", "midi"])
def test_checkpointing_and_bf16_lower_activations(family):
    base = scenesplat_profile if family == "scenesplat" else midi_profile
    plain = estimate_profile(base(), device="cuda")
    ckpt = estimate_profile(base(train={"gradient_checkpointing": True}), device="cuda")
    bf16 = estimate_profile(base(train={"mixed_precision": "bf16"}), device="cuda")
    assert ckpt.breakdown["activations"] < 0.6 * plain.breakdown["activations"]
    assert bf16.breakdown["activations"] < 0.8 * plain.breakdown["activations"]
    for other in (ckpt, bf16):
        for key in ("weights", "lora", "gradients", "optimizer"):
            assert other.breakdown[key] == plain.breakdown[key]


def test_breakdown_margin_and_overhead():
    est = estimate_profile(midi_profile(), device="cuda")
    assert tuple(est.breakdown) == BREAKDOWN_KEYS
    assert sum(est.breakdown.values()) == pytest.approx(est.expected_bytes, abs=8)
    assert est.estimate_bytes == int(est.expected_bytes * 1.1)
    assert est.breakdown["overhead"] >= 400 * 1024**2
    assert est.breakdown["optimizer"] == 2 * est.breakdown["gradients"] == 2 * est.breakdown["lora"]
    assert estimate_profile(midi_profile(), device="cpu").breakdown["overhead"] < est.breakdown["overhead"]


def test_tokens_follow_the_profile():
    assert estimate_profile(scenesplat_profile(30_000), device="cuda").tokens == 2 * 30_000
    assert estimate_profile(midi_profile(1024, 4), device="cuda").tokens == 2 * 4 * 1025


def test_measured_correction_scales_the_model_part():
    profile = midi_profile()
    plain = estimate_profile(profile, device="cuda")
    measured = {"cpu_mode": False, "measured": {"family": "midi", "device": "cuda", "correction": 1.5}}
    corrected = estimate_profile(midi_profile(hardware=measured), device="cuda")
    model_part = plain.expected_bytes - plain.breakdown["overhead"]
    assert corrected.correction == 1.5
    assert corrected.breakdown["activations"] == pytest.approx(1.5 * plain.breakdown["activations"], rel=1e-6)
    assert corrected.expected_bytes - corrected.breakdown["overhead"] == pytest.approx(1.5 * model_part, rel=1e-6)
    # Another family's or device's factor is ignored.
    other = {"cpu_mode": False, "measured": {"family": "scenesplat", "device": "cuda", "correction": 1.5}}
    assert estimate_profile(midi_profile(hardware=other), device="cuda").expected_bytes == plain.expected_bytes


def test_explicit_rank_rescales_without_redescribing():
    profile = scenesplat_profile(lora={"r": 8})
    desc = describe_ptv3(profile)
    at8 = estimate_description(desc, 2, False, "no", rank=8)
    at16 = estimate_description(desc, 2, False, "no", rank=16)
    head = desc.other_trainable_params * 4
    assert at16.breakdown["lora"] - head == 2 * (at8.breakdown["lora"] - head) > 0
    assert at16.breakdown["lora"] == estimate_profile(scenesplat_profile(lora={"r": 16}), device="cuda").breakdown["lora"]
