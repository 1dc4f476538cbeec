"""The family contract, proven on the test family: everything the engine offers works from its one file.

tests/toy_family.py declares a memory description, a demo, wizard defaults, presets and an identity field;
these tests use them through the public commands only (the wizard's model list is tested in tests/wizard).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tests.toy_family as toy
from engine.errors import CheckpointError
from engine.families.recipe import resolve_recipe
from engine.train.trainer import train
from tests.conftest import REPO, toy_profile_dict


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=300)


def test_plan_uses_the_family_memory_description(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path, model={"num_blocks": 3}))
    result = _cli("plan", str(path), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    recipe = resolve_recipe(toy_profile_dict(tmp_path, model={"num_blocks": 3}))
    described = recipe.family.describe_memory(recipe)
    assert described.frozen_params == 3 * (toy.DIM * toy.DIM + toy.DIM) + toy.DIM + 1
    # fp32 frozen weights on the device, as described; the LoRA part follows the rank
    assert plan["breakdown"]["weights"] == 4 * described.frozen_params
    assert plan["breakdown"]["lora"] == 4 * described.lora_params > 0


def test_demo_runs_from_the_entry(tmp_path):
    result = _cli("demo", "toy", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "toy demo: completed after 8 steps" in result.stdout
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").is_file()


def test_help_lists_the_family_and_its_demo():
    result = _cli("--help")
    assert result.returncode == 0
    assert toy.ToyFamily.label in " ".join(result.stdout.split())
    assert "toy" in _cli("demo", "--help").stdout


def test_preset_and_notes_come_from_the_declared_presets(tmp_path):
    data = toy_profile_dict(tmp_path)
    data["lora"] = {"preset": "tiny"}
    recipe = resolve_recipe(data)
    assert (recipe.profile.lora.r, recipe.profile.lora.alpha) == (2, 4.0) and not [n for n in recipe.notes if "lora" in n]
    data["lora"] = {"preset": "tiny", "r": 3}
    noted = resolve_recipe(data)
    assert noted.profile.lora.r == 3
    assert any("`lora.r`: 3 from the profile wins over preset `tiny`'s 2" in n for n in noted.notes)


def test_resume_is_refused_when_the_family_identity_field_changes(tmp_path, monkeypatch):
    data = toy_profile_dict(tmp_path, train={"max_steps": 2, "checkpoint_every": 2})
    train(resolve_recipe(data), install_signal_handlers=False)
    monkeypatch.setattr(toy, "TRAIN_SEED", 99)  # the family now builds other data: its identity field says so
    with pytest.raises(CheckpointError) as info:
        train(resolve_recipe(dict(data, train={**data["train"], "max_steps": 4})), resume=True,
              install_signal_handlers=False)
    message = str(info.value)
    assert "toy.data_seeds: checkpoint [7, 8], this run [99, 8]" in message
    assert "train.max_steps: checkpoint 2, this run 4" in message
