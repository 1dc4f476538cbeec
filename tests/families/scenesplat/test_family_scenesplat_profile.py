"""Tests the scenesplat family's profile keys and checks: stages, presets, tasks, lang data, shipped profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_scenesplat import tiny_profile, tiny_profile_data

from engine.cli import main as cli_main
from engine.errors import ProfileError
from engine.families.recipe import resolve_recipe
from engine.families.scenesplat.synthetic import write_synthetic_dataset
from engine.profile.load import dump_profile

REPO = Path(__file__).resolve().parents[3]
SHIPPED = [REPO / "profiles" / "demo-scenesplat.yaml", *sorted((REPO / "profiles" / "scenesplat").glob("*.yaml"))]


def _error(tmp_path, **sections) -> str:
    with pytest.raises(ProfileError) as info:
        tiny_profile(tmp_path, **sections)
    return str(info.value)


def test_stage_out_of_range_lists_the_valid_stages(tmp_path):
    message = _error(tmp_path, lora={"target_stages": [1, 5]})
    assert "tiny.yaml: `lora.target_stages` lists stage(s) [5]" in message
    assert "`demo-tiny` backbone" in message and "Valid stages: 0, 1, 2" in message


def test_stage_check_counts_stages_of_the_named_backbone(tmp_path):
    ok = tiny_profile(tmp_path, model={"backbone": "pointcept"}, lora={"target_stages": [4]})
    assert ok.profile.lora.target_stages == [4]
    message = _error(tmp_path, model={"backbone": "scenesplat"}, lora={"target_stages": [4]})
    assert "Valid stages: 0, 1, 2, 3" in message


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"lora": {"preset": "huge"}}, "`lora.preset` is not a PTv3 preset, got 'huge'. Use one of `minimal`"),
        ({"model": {"task": "detect"}}, "`model.task` is not a scenesplat task, got 'detect'. Use one of `semseg`, `lang`"),
        ({"model": {"task": "lang", "lang_dim": 768}}, "`model.lang_dim` must equal the backbone's output width (32"),
        ({"model": {"backbone": {"enc_depths": [1, 1], "in_channels": 6}}}, "`model.backbone.in_channels` must be 11"),
        ({"model": {"num_classes": 3}}, "`model.num_classes` must be at least 6"),
        ({"model": {"num_classes": 6, "class_names": ["a", "b"]}}, "`model.class_names` has 2 names but"),
        ({"model": {"backbone": "scenesplat", "demo_base": True}}, "`model.demo_base` needs `model.backbone: demo-tiny`"),
        ({"lora": {"target_modules": ["conv"]}}, "`lora.target_modules` must be a non-empty subset of `attn`, `mlp`"),
    ],
)
def test_bad_combinations_are_named(tmp_path, sections, expected):
    assert expected in _error(tmp_path, **sections)


def test_unknown_family_key_suggests_the_right_one(tmp_path):
    message = _error(tmp_path, data={"grid_sise": 0.05})
    assert "unknown key `data.grid_sise`. Did you mean `data.grid_size`?" in message


def test_lang_task_without_lang_features_says_what_is_missing(tmp_path):
    root = tmp_path / "scenes"
    write_synthetic_dataset(root, num_train=1, num_val=1, num_points=200)
    message = _error(tmp_path, model={"task": "lang"}, data={"root": str(root)})
    assert "`model.task` lang needs language features, got no `lang_feat.npy`" in message
    assert "`model.text_embeddings` is needed" in message


def test_semseg_with_a_data_folder_needs_num_classes(tmp_path):
    root = tmp_path / "scenes"
    write_synthetic_dataset(root, num_train=1, num_val=1, num_points=200)
    assert "`model.num_classes` is required with a `data.root`" in _error(tmp_path, data={"root": str(root)})
    assert tiny_profile(tmp_path, data={"root": str(root)}, model={"num_classes": 6}).profile.model.num_classes == 6


def test_task_defaults_to_semseg(tmp_path):
    data = tiny_profile_data(tmp_path)
    del data["model"]["task"]
    assert resolve_recipe(data).profile.model.task == "semseg"


@pytest.mark.parametrize(
    ("backbone", "preset", "expected"),
    [
        ("demo-tiny", "minimal", {"r": 4, "alpha": 4.0, "target_stages": [1, 2], "encoder_only": True}),
        ("pointcept", "minimal", {"r": 4, "target_stages": [3, 4], "target_modules": ["attn"]}),
        ("scenesplat", "minimal", {"target_stages": [2, 3]}),
        ("scenesplat", "full", {"r": 16, "target_modules": ["attn", "mlp"], "enable_prompt": True, "encoder_only": False}),
        # the decoder stages are written out, so the resolved profile alone reproduces the run
        ("scenesplat", "decoder_only", {"r": 8, "encoder_only": False, "target_stages": ["dec0", "dec1", "dec2"]}),
    ],
)
def test_preset_fills_unset_lora_keys_and_survives_a_round_trip(tmp_path, backbone, preset, expected):
    data = tiny_profile_data(tmp_path, model={"backbone": backbone})
    data["lora"] = {"preset": preset}
    profile = resolve_recipe(data).profile
    for key, value in expected.items():
        assert getattr(profile.lora, key) == value, key
    import yaml

    again = resolve_recipe(yaml.safe_load(dump_profile(profile))).profile
    assert again.lora == profile.lora


def test_explicit_key_beats_the_preset(tmp_path):
    profile = tiny_profile(tmp_path, lora={"preset": "minimal", "r": 16, "target_stages": [0]}).profile
    assert (profile.lora.r, profile.lora.alpha, profile.lora.target_stages) == (16, 8.0, [0])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_profile_validates(path, capsys):
    assert cli_main(["validate", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("#") and "How to run" in text or "how to run" in text.lower()
