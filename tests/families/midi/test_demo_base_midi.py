"""Tests the MIDI demo's base: two Trainer runs (the VAE as an SDF autoencoder, then the DiT), built once, cached."""

from __future__ import annotations

import json

import pytest
import torch
from midi_helpers import REPO, single_thread
from safetensors.torch import load_file

from engine.errors import CheckpointError
from engine.families.midi.demo_base import base_prerequisites
from engine.families.midi.demo_vae import build_vae_shapes
from engine.families.midi.latents import encode_posterior
from engine.families.midi.options import DEMO_BASE_SETTINGS
from engine.families.recipe import load_recipe, resolve_recipe
from engine.models.dit.vae import TripoSGVAEModel
from engine.train.prerequisites import ensure_prerequisite

TINY = {**DEMO_BASE_SETTINGS, "variant": "quick", "points": 64, "image": 32, "vae_scenes": 1, "vae_steps": 3,
        "vae_batch": 4, "a_scenes": 2, "base_steps": 2, "base_batch": 2}
"""The demo base's two runs at the smallest sizes that still exercise every step."""


def test_the_demo_profile_declares_its_base_as_two_training_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path))
    recipe = load_recipe(REPO / "profiles" / "demo-midi.yaml")
    vae, base = recipe.family.prerequisites(recipe)
    assert base.path == recipe.options.pretrained and base.path.parent == vae.path.parent == tmp_path
    assert base.path.name.startswith("midi-demo-base-v") and "-quick" not in base.path.name
    vae_recipe = resolve_recipe(dict(vae.profile))
    assert vae_recipe.task.name == "vae" and vae_recipe.lora.method == "full"
    model, lora, data = (base.profile[k] for k in ("model", "lora", "data"))
    assert model["task"] == "flow" and lora["method"] == "full"
    assert model["pretrained"] == str(vae.path)  # the DiT's run loads the first run's result (built first)
    assert data["synthetic_domain"] == "A" and recipe.profile.data.synthetic_domain == "B"
    assert model["mi_blocks"] == [1] and recipe.options.mi_blocks == (1,)
    # an explicit base wins over the demo base, and nothing is built for it
    (tmp_path / "mine").mkdir()
    explicit = load_recipe(REPO / "profiles" / "demo-midi.yaml", [f"model.pretrained={tmp_path / 'mine'}"])
    assert explicit.family.prerequisites(explicit) == []
    with pytest.raises(CheckpointError, match="the demo base is missing. Run the profile through `lora3d train`"):
        recipe.family.build_model(recipe)


def test_the_base_is_trained_by_the_trainer_once_and_leaves_the_random_state_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path))
    said: list[str] = []
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    with single_thread():
        paths = [ensure_prerequisite(p, said.append) for p in base_prerequisites(TINY)]
    assert torch.equal(torch.random.get_rng_state(), state)
    vae_folder, base = paths
    assert sum("building" in line for line in said) == 2
    assert any(line.strip().startswith("step 3/3") for line in said)  # the VAE's run, through the Trainer
    random_vae = load_file(tmp_path / "midi-tiny-random-0" / "vae" / "diffusion_pytorch_model.safetensors")
    trained_vae = load_file(base / "vae" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(random_vae[k], trained_vae[k]) for k in random_vae)
    random_dit = load_file(vae_folder / "transformer" / "diffusion_pytorch_model.safetensors")
    trained_dit = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    assert random_dit.keys() == trained_dit.keys() and any(not torch.equal(random_dit[k], trained_dit[k]) for k in random_dit)
    assert "lora3d's trainer" in (base / "vae" / "lora3d_demo_vae.txt").read_text()
    assert "lora3d's trainer" in (base / "lora3d_demo_base.txt").read_text()
    assert json.loads((base / "model_index.json").read_text())
    # the VAE's posterior means are rescaled to unit std (the scale of the flow's noise)
    vae = TripoSGVAEModel.from_pretrained(str(base / "vae"), local_files_only=True)
    shapes = build_vae_shapes(TINY["vae_scenes"], TINY["points"], TINY["seed"])
    mean, _ = encode_posterior(vae, shapes.surfaces, TINY["num_tokens"])
    assert float(mean.std()) == pytest.approx(1.0, rel=1e-3)
    # cached: a second call builds nothing
    said.clear()
    assert [ensure_prerequisite(p, said.append) for p in base_prerequisites(TINY)] == paths and said == []
