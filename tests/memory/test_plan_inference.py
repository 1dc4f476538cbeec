"""Tests the planner's inference mode: the most points per forward pass that fit a budget, and `plan --inference`."""

from __future__ import annotations

import json

import pytest
import yaml

from engine.errors import ProfileError
from engine.families.inference_budget import GIB, MARGIN, inference_budget
from engine.families.scenesplat.memory import PREDICT_HOST_BYTES_PER_GAUSSIAN, inference_memory
from engine.memory.plan import fake_hardware, plan_inference

from .profiles import scenesplat_profile


def _needed(recipe, points, scene, device):
    parts = inference_memory(recipe, device_type=device, points=points, scene_points=scene)
    return parts["expected"] + (parts["scene"] if device == "cpu" else 0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_budget_takes_the_most_points_whose_estimate_fits(device):
    recipe = scenesplat_profile()
    budget = inference_budget(recipe, device, 4 * GIB, scene_tokens=1_000_000)
    assert budget.fits and 1000 < budget.max_tokens < 1_000_000
    assert _needed(recipe, budget.max_tokens, 1_000_000, device) * MARGIN <= 4 * GIB
    assert _needed(recipe, int(budget.max_tokens * 1.05), 1_000_000, device) * MARGIN > 4 * GIB
    assert budget.estimate_bytes <= 4 * GIB and budget.parts["scene"] == 1_000_000 * PREDICT_HOST_BYTES_PER_GAUSSIAN


def test_a_scene_that_fits_runs_whole_and_a_tiny_budget_does_not_fit():
    recipe = scenesplat_profile()
    assert inference_budget(recipe, "cuda", 80 * GIB, scene_tokens=50_000).max_tokens == 50_000
    tiny = inference_budget(recipe, "cpu", GIB // 8, scene_tokens=50_000)
    assert not tiny.fits and "exceed the budget" in tiny.notes[0]


def test_plan_inference_uses_the_device_the_training_plan_would_use():
    recipe = scenesplat_profile(train={"device": "auto"})
    on_gpu = plan_inference(recipe, fake_hardware(24), scene_points=500_000)
    on_cpu = plan_inference(recipe, fake_hardware(0, host_ram_gb=16), scene_points=500_000)
    assert on_gpu.device == "cuda" and on_gpu.budget_bytes == 24 * GIB
    assert on_cpu.device == "cpu" and on_cpu.budget_bytes == 14 * GIB


def test_a_family_without_an_inference_estimate_is_told_so(tmp_path):
    from engine.families.recipe import resolve_recipe
    from tests.conftest import toy_profile_dict

    recipe = resolve_recipe(toy_profile_dict(tmp_path), "toy.yaml")
    with pytest.raises(ProfileError, match="gives no inference memory estimate"):
        inference_budget(recipe, "cpu", GIB)


def test_plan_inference_on_the_command_line(tmp_path, monkeypatch, capsys):
    from engine.cli import main

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"schema_version": 1, "model": {"family": "scenesplat", "backbone": "scenesplat"},
                                       "train": {"device": "cuda"}}))
    monkeypatch.setenv("LORA3D_FAKE_GPU_GB", "16")
    assert main(["plan", str(profile), "--inference", "--scene-points", "1000000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cuda" and out["budget_bytes"] == 16 * GIB and out["estimate_bytes"] <= 16 * GIB
    assert main(["plan", str(profile), "--inference", "--scene-points", "1000000", "--memory-gb", "6"]) == 0
    text = capsys.readouterr().out
    assert f"{out['max_tokens']}" not in text and "points per forward pass" in text and "larger scenes run in chunks" in text
