"""Tests the seed's three MIDI command lines (prepare_data.py, train_lora.py, inference_with_lora.py) and `lora3d`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh
from midi_helpers import REPO

from engine.families.recipe import load_recipe

PYTHON = REPO / ".venv" / "bin" / "python"
LORA3D = REPO / ".venv" / "bin" / "lora3d"


def _run(args: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORA3D_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("LORA3D_PLUGINS", None)
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _python() -> str:
    return str(PYTHON) if PYTHON.exists() else sys.executable


def test_train_lora_midi_flags_map_onto_the_seed_profile(tmp_path):
    train_lora = _script("train_lora")
    args = train_lora.build_parser().parse_args([
        "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--batch_size", "4",
        "--num_epochs", "100", "--learning_rate", "1e-4", "--lora_rank", "16",
    ])
    argv = train_lora.build_cli_args(args)
    assert argv[:2] == ["train", str(REPO / "profiles" / "midi" / "lora_finetune.yaml")]
    profile = load_recipe(argv[1], argv[argv.index("--set") + 1 :]).profile
    assert profile.model.family == "midi" and profile.model.mi_blocks is None
    assert (profile.train.batch_size, profile.train.epochs, profile.train.lr) == (4, 100, 1e-4)
    assert (profile.lora.r, profile.lora.alpha, profile.lora.dropout) == (16, 16, 0.1)
    assert profile.data.root == tmp_path and profile.output.dir == tmp_path / "out"
    assert profile.train.mixed_precision == "fp16" and profile.train.scheduler == "cosine"


def _script(name: str):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_inference_script_without_pretrained_or_demo_base_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "empty-cache"))
    code = _script("inference_with_lora").main(["--rgb_image", "a.png", "--seg_image", "b.png",
                                                "--output", str(tmp_path / "r.glb")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--pretrained: no base model given" in err and "lora3d demo midi" in err


def test_inference_script_uses_the_demo_base_when_cached(tmp_path, monkeypatch):
    for name in ("midi-demo-base-v1-quick-seed0", "midi-demo-base-v1-seed0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path))
    assert _script("inference_with_lora").default_pretrained() == tmp_path / "midi-demo-base-v1-seed0"


@pytest.mark.slow
def test_seed_command_lines_prepare_train_infer(tmp_path):
    from engine.families.midi.synthetic import write_synthetic_raw_scenes

    cache = tmp_path / "cache"
    raw, prepared, out = tmp_path / "raw_meshes", tmp_path / "training_data", tmp_path / "lora_finetune"
    write_synthetic_raw_scenes(raw, 3, domain="B", seed=1, image_size=32)
    # 1. python prepare_data.py --input_dir ... --output_dir ... --num_samples N
    result = _run([_python(), "scripts/prepare_data.py", "--input_dir", str(raw), "--output_dir", str(prepared),
                   "--num_samples", "256", "--image_size", "32", "--workers", "1"], cache)
    assert result.returncode == 0, result.stderr
    # 2. python train_lora.py --data_dir --output_dir --batch_size --num_epochs --learning_rate --lora_rank
    # (`--mixed_precision no` is not used: the script passes it on unquoted and YAML reads `no` as false.)
    small = ["model.num_tokens=16", "model.num_instances_per_batch=3", "data.eval_chamfer_every=0",
             "output.tensorboard=false", f"data.cache_dir={cache / 'latents'}"]
    result = _run([_python(), "scripts/train_lora.py", "--data_dir", str(prepared), "--output_dir", str(out),
                   "--batch_size", "1", "--num_epochs", "1", "--learning_rate", "1e-3", "--lora_rank", "4",
                   "--quiet", "--options", "train.mixed_precision='no'", *small], cache)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    base = cache / "midi-tiny-random-0"
    assert (base / "model_index.json").is_file()  # the empty `model.pretrained` base
    # 3. python inference_with_lora.py --lora_path --rgb_image --seg_image --output result.glb
    scene = sorted(p for p in prepared.iterdir() if p.is_dir())[0]
    glb = tmp_path / "result.glb"
    result = _run([_python(), "scripts/inference_with_lora.py", "--lora_path", str(out / "adapter"),
                   "--rgb_image", str(scene / "image.png"), "--seg_image", str(scene / "seg.png"),
                   "--output", str(glb), "--pretrained", str(base), "--steps", "2", "--octree_resolution", "16"], cache)
    assert result.returncode == 0, result.stderr
    assert len(trimesh.load(glb).geometry) >= 1
    # the same through the CLI, and its error path
    result = _run([str(LORA3D), "infer", "--pretrained", str(base), "--lora_path", str(out / "adapter"),
                   "--rgb_image", str(scene / "image.png"), "--seg_image", str(tmp_path / "missing.png"),
                   "--output", str(tmp_path / "x.glb")], cache)
    assert result.returncode == 2 and "segmentation image not found" in result.stderr
