"""Tests the MIDI demo in quick mode: the LoRA-adapted DiT beats the base on domain B, and a GLB is written."""

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
    result = run_demo(tmp_path / "demo", console=Console(file=buffer, width=120), quick=True, seed=0)
    base, adapted = result["base"], result["adapted"]
    assert adapted["val_loss"] < base["val_loss"]
    assert (result["adapter"] / "adapter_model.safetensors").is_file()
    scene = trimesh.load(result["glb"])
    assert len(scene.geometry) >= 1 and all(name.startswith("instance_") for name in scene.geometry)
    text = buffer.getvalue()
    assert "base (pretrained on A)" in text and "adapted (LoRA on B)" in text and f"{adapted['val_loss']:.4f}" in text
    # the base is cached: a second run reuses it
    assert result["base_folder"].is_dir() and (result["base_folder"] / "transformer" / "config.json").is_file()
