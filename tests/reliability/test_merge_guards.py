"""`lora3d merge` never overwrites what it reads or what the run keeps, never merges a broken adapter, and
never leaves a partial file: each refusal exits 2 with one message, and the run directory is unchanged.

The run directory is built directly (a random demo-tiny SceneSplat base and a randomised adapter saved by
the family, as a finished run leaves them), which takes a fraction of a second instead of a training run.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from engine.atomic import atomic_file, clean_stale_temporaries, pid_alive
from engine.families.recipe import resolve_recipe
from engine.lora.inject import apply_lora_spec
from engine.models.ptv3.checkpoint import save_ptv3_checkpoint
from engine.profile import save_profile
from tests.conftest import REPO
from tests.malformed.builders import folder_digest
from tests.malformed.harness import assert_one_message, run_cli, run_cli_full


@pytest.fixture
def run_dir(tmp_path) -> Path:
    data = yaml.safe_load((REPO / "profiles" / "demo-scenesplat.yaml").read_text())
    data["model"]["demo_base"] = False
    data["output"]["dir"] = str(tmp_path / "run")
    torch.manual_seed(0)
    random_base = resolve_recipe(data)
    model = random_base.family.build_model(random_base)
    save_ptv3_checkpoint(model.state_dict(), tmp_path / "base.pth")  # the base the merge folds into
    data["model"]["pretrained"] = str(tmp_path / "base.pth")
    recipe = resolve_recipe(data)
    model = recipe.family.build_model(recipe)
    apply_lora_spec(model, recipe.lora)
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.01
    run = tmp_path / "run"
    recipe.family.save_adapter(model, run / "adapter", {})
    recipe.family.save_adapter(model, run / "adapter-best", {})
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    save_profile(recipe.profile, run / "profile.resolved.yaml")
    return run


def _merge(run: Path, out: Path, capsys) -> tuple[int | None, str]:
    return run_cli(["merge", str(run), "--out", str(out)], capsys)


@pytest.mark.parametrize("where", [
    "adapter/adapter_model.safetensors", "adapter", "adapter/merged.pth", "adapter-best/model.pth",
    "checkpoints/step-1/model.safetensors", "checkpoints",
])
def test_output_inside_the_runs_own_folders_is_refused(run_dir, capsys, where):
    before = folder_digest(run_dir)
    code, err = _merge(run_dir, run_dir / where, capsys)
    assert_one_message(code, err, (str(run_dir / where), "`--out`", f"{where.split('/')[0]}/ folder"))
    assert folder_digest(run_dir) == before


@pytest.mark.parametrize("up", [0, 1])
def test_output_replacing_the_run_directory_is_refused(run_dir, capsys, up):
    target = run_dir.parents[up - 1] if up else run_dir
    before = folder_digest(run_dir)
    code, err = _merge(run_dir, target, capsys)
    assert_one_message(code, err, (str(target), "run directory or a folder holding it"))
    assert folder_digest(run_dir) == before


def test_output_through_a_symlink_into_the_adapter_is_refused(run_dir, tmp_path, capsys):
    link = tmp_path / "elsewhere"
    link.symlink_to(run_dir / "adapter")
    before = folder_digest(run_dir)
    code, err = _merge(run_dir, link / "adapter_model.safetensors", capsys)
    assert_one_message(code, err, ("adapter/ folder",))
    assert folder_digest(run_dir) == before


def test_output_that_is_a_pipe_is_refused(run_dir, tmp_path, capsys):
    fifo = tmp_path / "out.pth"
    os.mkfifo(fifo)
    code, err = _merge(run_dir, fifo, capsys)
    assert_one_message(code, err, (str(fifo), "not a regular file or folder"))


def test_unwritable_output_exits_2_and_leaves_nothing(run_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "merged.pth"  # a file where a folder must be
    code, err = _merge(run_dir, out, capsys)
    assert_one_message(code, err, (str(out), "cannot be written", "nothing was written"))
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "base.pth", "run"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _poison(path: Path, count: int, value: float = float("nan")) -> int:
    tensors = load_file(str(path))
    keys = sorted(k for k in tensors if "lora_B" in k or "seg_head" in k)[:count]
    for key in keys:
        tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return len(keys)


@pytest.mark.parametrize(("file", "count", "value"), [
    ("adapter_model.safetensors", 20, float("nan")),
    ("adapter_model.safetensors", 1, float("inf")),
    ("seg_head.safetensors", 1, float("nan")),
])
def test_non_finite_adapter_is_refused_and_nothing_is_written(run_dir, tmp_path, capsys, file, count, value):
    poisoned = _poison(run_dir / "adapter" / file, count, value)
    assert poisoned == count
    before = folder_digest(run_dir)
    out = tmp_path / "merged.pth"
    code, err = _merge(run_dir, out, capsys)
    assert_one_message(code, err, ("NaN or infinite",))
    if file == "adapter_model.safetensors":
        assert f"{count} of " in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert folder_digest(run_dir) == before


def test_non_finite_adapter_is_refused_on_the_load_path_too(run_dir):
    from engine.errors import CheckpointError
    from engine.lora import load_lora_checkpoint
    from engine.models.ptv3 import PTv3Segmentor

    _poison(run_dir / "adapter" / "adapter_model.safetensors", 3)
    recipe = resolve_recipe(yaml.safe_load((run_dir / "profile.resolved.yaml").read_text()))
    model = recipe.family.build_model(recipe)
    assert isinstance(model, PTv3Segmentor)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values, got 3 of"):
        load_lora_checkpoint(model, run_dir / "adapter")
    assert not any("lora_" in k for k in model.state_dict())


def test_merged_weights_that_overflow_are_refused(run_dir, tmp_path, capsys):
    # Finite adapter tensors whose product overflows float32: only the merge itself can see it.
    path = run_dir / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[key] = torch.full_like(tensors[key], 1e30)
    tensors[key.replace("lora_A", "lora_B")] = torch.full_like(tensors[key.replace("lora_A", "lora_B")], 1e30)
    save_file(tensors, str(path), metadata={"format": "pt"})
    out = tmp_path / "merged.pth"
    code, err = _merge(run_dir, out, capsys)
    assert_one_message(code, err, ("NaN or infinite weights",))
    assert not out.exists()


def test_a_good_merge_still_works_and_loads(run_dir, tmp_path, capsys):
    out = tmp_path / "merged" / "model.pth"
    code, err, _ = run_cli_full(["merge", str(run_dir), "--out", str(out)], capsys)
    assert code == 0, err
    payload = torch.load(out, weights_only=True)
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values())


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


def test_temporaries_of_a_killed_merge_are_removed_and_said(run_dir, tmp_path, capsys):
    host = "".join(c for c in socket.gethostname() if c.isalnum())[:16] or "host"
    stale = tmp_path / f".merged.pth.{host}-{_dead_pid()}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".merged.pth.{host}-{os.getpid()}.efgh5678.tmp"  # a write in progress: kept
    live.write_bytes(b"being written")
    code, err, out = run_cli_full(["merge", str(run_dir), "--out", str(tmp_path / "merged.pth")], capsys)
    assert code == 0, err
    assert not stale.exists() and live.exists()
    assert f"removed {stale}" in " ".join(out.split())


def test_atomic_temporaries_record_their_owner(tmp_path):
    dest = tmp_path / "x.bin"
    with atomic_file(dest) as tmp:
        assert f"-{os.getpid()}." in tmp.name
        assert clean_stale_temporaries(tmp_path) == []  # our own write in progress is never removed
        tmp.write_bytes(b"1")
    assert dest.read_bytes() == b"1" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_midi_prepare_removes_scene_temporaries_of_killed_runs(tmp_path):
    import trimesh

    from engine.families.midi.prepare import prepare_dataset

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    trimesh.creation.box().export(raw / "box.obj")
    stale = out / f".box.tmp-{_dead_pid()}-0123abcd"
    live = out / f".other.tmp-{os.getpid()}-4567cdef"
    stale.mkdir(parents=True)
    live.mkdir()
    report = prepare_dataset(raw, out, num_samples=64, image_size=32, workers=1, progress=False)
    assert report.prepared == ["box"]
    assert not stale.exists() and live.exists()
    note = next(p for p in report.warnings if p.file == stale.name)
    assert note.scene == "box" and "interrupted run" in note.message
