"""Tests the MIDI demo: the LoRA-adapted DiT beats the base on domain B, the trained VAE reconstructs, a GLB is written."""

from __future__ import annotations

import io

import pytest
import trimesh
from rich.console import Console

from engine.families.midi.demo import run_demo


@pytest.mark.slow
def test_quick_demo_adapted_beats_base_and_writes_a_glb(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))
    buffer = io.StringIO()
    result = run_demo(tmp_path / "demo", console=Console(file=buffer, width=160), quick=True, seed=0)
    base, adapted = result["base"], result["adapted"]
    # measured at seed 0: 0.8814 -> 0.8087 (base built by the Trainer; 1.2695 -> 1.2031 with the former plain loops)
    assert adapted["val_loss"] < base["val_loss"] - 0.03
    # the quick VAE (300 steps) is coarse, yet far from a random VAE's ~0.93 (measured 0.69; 0.58 before)
    assert result["recon_chamfer"] < 0.75
    assert (result["adapter"] / "adapter_model.safetensors").is_file()
    scene = trimesh.load(result["glb"])
    assert len(scene.geometry) >= 1 and all(name.startswith("instance_") for name in scene.geometry)
    text = buffer.getvalue()
    assert "base (pretrained on A)" in text and "adapted (LoRA on B)" in text and f"{adapted['val_loss']:.4f}" in text
    assert "VAE reconstruction (floor)" in text and "Loading weights" not in text
    # the base and its VAE are cached: a second run reuses them
    assert result["base_folder"].is_dir() and (result["base_folder"] / "transformer" / "config.json").is_file()
    assert (result["base_folder"] / "vae" / "lora3d_demo_vae.txt").is_file()


@pytest.mark.slow
def test_full_demo_adapted_beats_base_on_loss(tmp_path, monkeypatch):
    """The issue's claim at the demo's own size (about 3 min of CPU on 2 cores, cold cache)."""
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))
    result = run_demo(tmp_path / "demo", console=Console(file=io.StringIO(), width=160), quick=False, seed=0)
    base, adapted = result["base"], result["adapted"]
    # measured at seed 0: val loss 1.0514 -> 0.7617, VAE floor 0.1387 (base built by the Trainer)
    assert adapted["val_loss"] < base["val_loss"] - 0.1
    assert result["recon_chamfer"] < 0.2
    # NOTE: Chamfer to the ground truth is reported, not asserted. It is dominated by where each instance
    # stands, which the demo's images barely determine, so its sign follows the seed: with the former
    # plain-loop base, LoRA seeds 0/1/2 gave 1.81 -> 1.51/1.72/1.88 and demo seed 1 1.63 -> 1.78; with the
    # Trainer-built base, seed 0 gives 1.60 -> 1.68 and seed 1 1.46 -> 1.37 (docs/midi.md).
    assert 0.0 < adapted["val_chamfer"] < 3.0 and 0.0 < base["val_chamfer"] < 3.0
