"""The built-in Sonata demo (quick mode): a base pretrained through the trainer, adapted to rooms B, beats itself."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from engine.cli import main as cli_main
from engine.families.sonata import demo

# Measured with seed 0 in quick mode: base 0.481 -> adapted 0.858 on domain B's validation rooms.
MARGIN = 0.2


def test_quick_demo_improves_miou_through_the_real_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))
    console = Console(record=True, width=120)
    result = demo.run_demo(tmp_path / "run", console=console, quick=True, seed=0)
    assert result["adapted_miou"] > result["base_miou"] + MARGIN
    base = Path(result["base_checkpoint"])
    assert base.parent == tmp_path / "cache" and base.name.startswith("sonata-demo-base-")
    ckpt = torch.load(base, weights_only=True)
    assert set(ckpt) == {"epoch", "state_dict"} and "backbone.embedding.stem.linear.weight" in ckpt["state_dict"]
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "adapter" / "head.safetensors").is_file()
    assert str(base) in (run / "profile.resolved.yaml").read_text()  # the real `model.pretrained` path
    assert 0 < result["trainable_ratio"] < 0.1
    text = console.export_text()
    assert "base + LoRA (adapted to B)" in text and f"{result['adapted_miou']:.3f}" in text
    assert demo.ensure_demo_base(quick=True) == base  # cached: a second run does not pretrain again


def test_lora3d_demo_sonata_reaches_the_demo(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, console=None, **kw: calls.append(out) or {})
    assert cli_main(["demo", "sonata", "--out", str(tmp_path / "d")]) == 0
    assert calls == [tmp_path / "d"]
