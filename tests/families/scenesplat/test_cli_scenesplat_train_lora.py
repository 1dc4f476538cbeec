"""Tests scripts/train_lora.py: the SceneSplat (--config-file/--options) and MIDI (--data_dir ...) command lines."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_scenesplat import tiny_profile_data, write_base_checkpoint

from engine.families.scenesplat.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "train_lora.py"
PYTHON = REPO / ".venv" / "bin" / "python"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LORA3D_PLUGINS"}
    env["COLUMNS"] = "200"
    return subprocess.run([str(PYTHON if PYTHON.exists() else sys.executable), str(SCRIPT), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def _script_module():
    spec = importlib.util.spec_from_file_location("train_lora_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    data = tiny_profile_data(tmp_path, train={"max_steps": 1})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_scenesplat_command_line_trains_with_pointcept_option_names(tmp_path, tiny_yaml):
    write_base_checkpoint(tmp_path / "checkpoints" / "pretrained.pth")
    result = _run("--config-file", str(tiny_yaml), "--options", "save_path=exp_runs/x", "lora.r=8",
                  "lora.preset=minimal", "lora_training.pretrained_path=checkpoints/pretrained.pth", "--quiet",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "exp_runs" / "x"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/seg_head.safetensors",
                 "events.jsonl", "profile.resolved.yaml"):
        assert (run / name).is_file(), name
    resolved = yaml.safe_load((run / "profile.resolved.yaml").read_text())
    assert resolved["lora"]["r"] == 8 and resolved["lora"]["preset"] == "minimal"
    # the preset fills the stages; given on the command line it wins over the file's alpha (8), while the
    # command line's own `lora.r=8` wins over the preset's 4 (docs/profiles.md: the preset rule), and it says so
    assert resolved["lora"]["target_stages"] == [1, 2] and resolved["lora"]["alpha"] == 4.0
    assert "preset `minimal` (command line) sets 4.0, replacing the profile's 8.0" in result.stderr
    assert "`lora.r`: 8 from the command line wins over preset `minimal`'s 4" in result.stderr
    assert resolved["model"]["pretrained"] == "checkpoints/pretrained.pth"


def test_unknown_option_key_exits_2_with_a_suggestion(tmp_path, tiny_yaml):
    result = _run("--config-file", str(tiny_yaml), "--options", "lora.rnak=8", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key `lora.rnak`. Did you mean `lora.r`?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_midi_command_line_maps_flags_onto_the_profile(tmp_path, tiny_yaml):
    root = tmp_path / "data" / "training_data"
    write_synthetic_dataset(root, num_train=2, num_val=1, num_points=500)
    profile = yaml.safe_load(tiny_yaml.read_text())
    profile["model"]["num_classes"] = 6
    tiny_yaml.write_text(yaml.safe_dump(profile))
    result = _run("--data_dir", "data/training_data", "--output_dir", "outputs/lora_finetune", "--batch_size", "1",
                  "--num_epochs", "1", "--learning_rate", "1e-3", "--lora_rank", "4", "--config", str(tiny_yaml),
                  "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "outputs" / "lora_finetune"
    resolved = yaml.safe_load((run / "profile.resolved.yaml").read_text())
    assert resolved["data"]["root"] == "data/training_data"
    assert resolved["train"]["epochs"] == 1 and resolved["train"]["max_steps"] is None
    assert resolved["train"]["lr"] == pytest.approx(1e-3) and resolved["train"]["batch_size"] == 1
    assert resolved["lora"]["r"] == 4 and resolved["lora"]["alpha"] == 4.0
    assert (run / "checkpoints" / "step-2").is_dir()  # one epoch of two scenes at batch 1
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_flag_mapping_without_config_uses_the_midi_profile():
    script = _script_module()
    args = script.build_parser().parse_args(
        ["--data_dir", "D", "--output_dir", "O", "--batch_size", "4", "--num_epochs", "100", "--learning_rate", "1e-4",
         "--lora_rank", "16", "--lora_alpha", "32"])
    argv = script.build_cli_args(args)
    assert argv[:2] == ["train", str(REPO / "profiles" / "midi" / "lora_finetune.yaml")]
    assert argv[3:] == ["data.root=D", "output.dir=O", "train.batch_size=4", "train.lr=0.0001", "lora.r=16",
                        "lora.alpha=32.0", "train.epochs=100", "train.max_steps=null"]


def test_both_profile_flags_is_a_usage_error(tmp_path, tiny_yaml):
    result = _run("--config-file", str(tiny_yaml), "--config", str(tiny_yaml), cwd=tmp_path)
    assert result.returncode == 2 and "give the profile once" in result.stderr
