"""Tests that every command in docs/midi.md parses, names files that exist, and runs (slow: all of them, in order)."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from midi_helpers import REPO, single_thread

DOC = REPO / "docs" / "midi.md"


def doc_commands() -> list[list[str]]:
    """The commands of the doc's ```bash blocks, split into argv lists, in order."""
    commands, inside = [], False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            commands.append(shlex.split(line))
    return commands


def _script(path: str):
    folder = REPO / Path(path).parent
    sys.path.insert(0, str(folder))
    try:
        return __import__(Path(path).stem)
    finally:
        sys.path.pop(0)


def test_doc_has_the_expected_commands():
    commands = doc_commands()
    programs = {(c[0], c[1]) for c in commands}
    assert ("lora3d", "demo") in programs and ("lora3d", "train") in programs and ("lora3d", "merge") in programs
    assert ("python", "scripts/prepare_data.py") in programs and ("python", "scripts/train_lora.py") in programs
    assert ("python", "scripts/inference_with_lora.py") in programs
    assert all(c[0] in ("lora3d", "python") for c in commands)


@pytest.mark.parametrize("argv", doc_commands(), ids=lambda c: " ".join(c[:3]))
def test_each_doc_command_parses_and_its_files_exist(argv):
    if argv[0] == "lora3d":
        from engine.cli import build_parser

        args = build_parser().parse_args(argv[1:])
        profile = getattr(args, "profile", None)
        if profile:
            assert (REPO / profile).is_file(), profile
    else:
        assert (REPO / argv[1]).is_file(), argv[1]
        _script(argv[1]).build_parser().parse_args(argv[2:])


# NOTE: `no` must be quoted: `--set` values are read as YAML, where a bare `no` is false.
_SMALL = ["model.num_tokens=16", "model.num_instances_per_batch=3", "train.max_steps=1",
          "train.mixed_precision='no'", "output.tensorboard=false", "data.eval_chamfer_every=0"]


def _shrink(argv: list[str], cache: Path) -> list[str]:
    """The doc command with settings that make it finish in seconds on a CPU (same code paths)."""
    small = [*_SMALL, f"data.cache_dir={cache}"]
    if argv[:2] == ["lora3d", "train"] or argv[:2] == ["lora3d", "validate"] or argv[:2] == ["lora3d", "data-check"]:
        i = argv.index("--set")
        return argv[: i + 1] + argv[i + 1 :] + small
    if argv[1] == "scripts/prepare_data.py":
        out = list(argv)
        out[out.index("--num_samples") + 1] = "256"
        return out + ["--image_size", "32", "--workers", "1"]
    if argv[1] == "scripts/train_lora.py":
        return argv + ["--max_steps", "1", "--quiet", "--options", *small]
    if argv[1] == "scripts/inference_with_lora.py" or argv[:2] == ["lora3d", "infer"]:
        return argv + ["--steps", "2", "--octree_resolution", "16", "--device", "cpu"]
    return argv


def _run(argv: list[str]) -> int:
    if argv[0] == "lora3d":
        from engine.cli import main

        return main(argv[1:])
    return _script(argv[1]).main(argv[2:])


@pytest.mark.slow
def test_every_doc_command_runs_in_order(tmp_path, monkeypatch):
    import engine.families.midi.demo as demo
    from engine.families.midi.synthetic import write_synthetic_raw_scenes
    from engine.models.dit.pipeline import build_tiny_pipeline

    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "lora3d-cache"))
    monkeypatch.setitem(demo._SIZES, False, demo._SIZES[True])  # the demo's quick sizes
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").symlink_to(REPO / "profiles")
    write_synthetic_raw_scenes(tmp_path / "data" / "raw_meshes", 6, domain="B", seed=2, image_size=32)
    build_tiny_pipeline(tmp_path / "weights" / "MIDI-3D")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with single_thread():
        for argv in doc_commands():
            seed_script = argv[:2] == ["python", "scripts/train_lora.py"]
            if seed_script:  # the doc's alternative to `lora3d train` above, into the same folder: set that run aside
                os.replace("outputs/lora_finetune", "outputs/lora_finetune.lora3d")
            if argv[:2] == ["python", "scripts/inference_with_lora.py"]:
                scene = sorted(p for p in Path("data/training_data").iterdir() if p.is_dir())[0]
                shutil.copy(scene / "image.png", "test.png")
                shutil.copy(scene / "seg.png", "mask.png")
            code = _run(_shrink(argv, tmp_path / "latents"))
            assert code == 0, argv
            if seed_script:  # the doc's `--resume` continues the `lora3d train` run (same base), so it comes back
                shutil.rmtree("outputs/lora_finetune")
                os.replace("outputs/lora_finetune.lora3d", "outputs/lora_finetune")
    assert Path("runs/demo-midi/result.glb").is_file()
    assert Path("outputs/lora_finetune/adapter/adapter_model.safetensors").is_file()
    assert Path("outputs/lora_12gb/adapter").is_dir()
    assert (Path("outputs/merged_transformer") / "config.json").is_file()
    assert Path("result.glb").is_file() and Path("result.obj").is_file()
