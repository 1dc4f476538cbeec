"""The sonata family's profile: presets resolve, problems are reported, and the planner's counts equal the real model's.

LoRA counts are taken on the meta device (no weights): the recipe's spec is applied to the released shapes.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_sonata import TINY_BACKBONE, TINY_DECODER, tiny_profile_data, tiny_recipe

from engine.cli import main as cli_main
from engine.errors import ProfileError
from engine.families.recipe import resolve_recipe
from engine.families.sonata.options import BACKBONES
from engine.lora.inject import apply_lora_spec, is_lora_parameter_name
from engine.models.sonata import CONCERTO_LARGE_CONFIG, SONATA_BASE_CONFIG, SonataSegmentor

PRESET_GROUPS = {"pointcept-lora": ["qkv"], "attn": ["attn"], "attn+mlp": ["attn", "mlp"], "linear": []}


def _closed_form(config: dict, r: int, groups: list[str]) -> int:
    """r x (in + out) per adapted linear, per encoder block of width C (MLP hidden hC):
    qkv C + 3C, proj C + C, fc1 C + hC, fc2 hC + C."""
    h = config["mlp_ratio"]
    per_channel = 0
    if "qkv" in groups or "attn" in groups:
        per_channel += 4
    if "attn" in groups:
        per_channel += 2
    if "mlp" in groups:
        per_channel += 2 * (1 + h)
    return r * per_channel * sum(d * c for d, c in zip(config["enc_depths"], config["enc_channels"]))


def _recipe(tmp_path, backbone, preset, **model):
    return resolve_recipe(tiny_profile_data(tmp_path, model={"backbone": backbone, "num_classes": 20, **model},
                                            lora={"preset": preset}), "p.yaml")


def _meta_model(recipe) -> torch.nn.Module:
    with torch.device("meta"):
        model = SonataSegmentor(dict(recipe.options.backbone, sparse_conv_backend="torch", attention_backend="sdpa"),
                                recipe.options.num_classes)
        return apply_lora_spec(model.requires_grad_(False), recipe.lora)


@pytest.mark.parametrize("preset", sorted(PRESET_GROUPS))
@pytest.mark.parametrize("backbone, config", [("concerto-large", CONCERTO_LARGE_CONFIG), ("sonata-base", SONATA_BASE_CONFIG)])
def test_preset_lora_counts_equal_the_closed_form_and_the_plan(tmp_path, backbone, config, preset):
    recipe = _recipe(tmp_path, backbone, preset)
    model = _meta_model(recipe)
    lora = sum(p.numel() for n, p in model.named_parameters() if is_lora_parameter_name(n))
    assert lora == _closed_form(config, 8, PRESET_GROUPS[preset])
    # the planner counts what the model has, without building it
    description = recipe.family.describe_memory(recipe)
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not is_lora_parameter_name(n))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert (description.lora_params, description.other_trainable_params, description.frozen_params) == (lora, trainable, frozen)
    assert trainable == sum(config["enc_channels"]) * 20 + 20  # the head on every level concatenated


def test_pointcept_lora_is_r8_a16_d01_on_qkv_and_concerto_large_counts_313k(tmp_path):
    recipe = _recipe(tmp_path, "concerto-large", "pointcept-lora")
    lora = recipe.profile.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (8, 16.0, 0.1, ["qkv"])
    assert recipe.options.head_channels == 1728 and recipe.lora.trainable_modules == ("seg_head",)
    assert recipe.family.describe_memory(recipe).lora_params == 313_344


def test_decoder_backbone_trains_the_decoder_and_the_plan_counts_it(tmp_path):
    recipe = _recipe(tmp_path, "sonata-base-decoder", "linear")
    assert recipe.options.head_channels == 64 and recipe.lora.targets is None
    assert recipe.lora.trainable_modules == ("seg_head", "backbone.dec")
    assert any("decoder trains in full" in n for n in recipe.notes)
    model = _meta_model(recipe)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == recipe.family.describe_memory(recipe).other_trainable_params
    assert trainable == sum(p.numel() for p in model.backbone.dec.parameters()) + 64 * 20 + 20


def test_every_named_backbone_and_full_method_count_like_the_model(tmp_path):
    for name in BACKBONES:
        recipe = resolve_recipe(tiny_profile_data(tmp_path, model={"backbone": name, "num_classes": 20},
                                                  lora={"preset": None, "method": "full"}), "p.yaml")
        model = _meta_model(recipe)
        description = recipe.family.describe_memory(recipe)
        assert description.other_trainable_params == sum(p.numel() for p in model.parameters()), name
        assert description.frozen_params == 0 and description.lora_params == 0


def test_defaults_are_said(tmp_path):
    recipe = resolve_recipe(tiny_profile_data(tmp_path, lora={"preset": None}), "p.yaml")
    assert recipe.profile.lora.target_modules is None and recipe.lora.targets.target_modules == ("qkv",)
    assert any("`lora.target_modules` is empty: LoRA on every encoder `qkv`" in n for n in recipe.notes)
    assert any("randomly initialised" in n for n in recipe.notes)
    # a key next to the preset wins over it, and the note says so
    recipe = resolve_recipe(tiny_profile_data(tmp_path, lora={"preset": "pointcept-lora", "r": 4}), "p.yaml")
    assert recipe.lora.r == 4 and recipe.lora.alpha == 16.0
    assert any("`lora.r`: 4 from the profile wins over preset `pointcept-lora`'s 8" in n for n in recipe.notes)


@pytest.mark.parametrize("model, lora, message", [
    ({"backbone": dict(TINY_BACKBONE, in_channels=6)}, {}, "`model.backbone.in_channels` must be 9 (coord 3 + color 3"),
    ({}, {"preset": None, "target_modules": ["attn", "proj"]}, "`lora.target_modules` must be a subset of `qkv`"),
    ({}, {"target_stages": [5]}, "`lora.target_stages` lists stage(s) [5]"),
    ({"train_decoder": True}, {}, "`model.train_decoder` needs a backbone with a decoder"),
    ({"demo_base": True}, {}, "`model.demo_base` needs `model.backbone: demo-tiny`"),
    ({"losses": {"lovasz": 0.0}}, {}, "`model.losses` must map at least one of `cross_entropy`, `lovasz`"),
    ({"num_classes": 3}, {}, "`model.num_classes` must be at least 6 for the built-in synthetic rooms"),
])
def test_profile_problems_name_the_key_and_the_fix(tmp_path, model, lora, message):
    with pytest.raises(ProfileError) as exc:
        tiny_recipe(tmp_path, model=model, lora=lora)
    assert str(exc.value).startswith("tiny.yaml: ") and message in str(exc.value)


def test_unknown_preset_lists_the_family_presets(tmp_path):
    with pytest.raises(ProfileError, match="not a PT-v3m2 preset, got 'standard'. Use one of `pointcept-lora`, `attn`"):
        tiny_recipe(tmp_path, lora={"preset": "standard"})


def test_lora3d_plan_plans_concerto_large_on_a_24gb_gpu(tmp_path, monkeypatch, capsys, write_profile):
    data = tiny_profile_data(tmp_path, model={"backbone": "concerto-large", "num_classes": 20},
                             data={"root": str(tmp_path / "scannet"), "point_budget": 102400},
                             train={"device": "auto", "batch_size": 8})
    (tmp_path / "scannet").mkdir()
    path = write_profile(data)
    monkeypatch.setenv("LORA3D_FAKE_GPU_GB", "24")
    assert cli_main(["plan", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"] == "cuda" and plan["tokens"] == 8 * 102400
    assert plan["recommendation"]["fits"] and plan["recommendation"]["estimate_bytes"] <= 24 * 1024**3
    assert any("LoRA on qkv of 5 stage(s)" in n for n in plan["notes"])
    # the frozen 207.7M-parameter backbone is counted in fp32
    assert 207e6 * 4 < plan["breakdown"]["weights"] < 208.5e6 * 4


def test_decoder_variant_of_the_tiny_backbone_resolves(tmp_path):
    recipe = tiny_recipe(tmp_path, model={"backbone": TINY_DECODER})
    assert recipe.options.train_decoder and not recipe.options.enc_mode and recipe.options.head_channels == 8
