"""Tests scripts/prepare_data.py exit codes and messages, run as a user would from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trimesh

REPO = Path(__file__).resolve().parents[3]
PYTHON = REPO / ".venv" / "bin" / "python"


def _run(*args: str) -> subprocess.CompletedProcess:
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    command = [python, "scripts/prepare_data.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def _scene(folder: Path) -> None:
    folder.mkdir(parents=True)
    trimesh.creation.box().export(folder / "a.stl")
    trimesh.creation.icosphere(subdivisions=1).apply_translation([2, 0, 0]).export(folder / "b.glb")


def _common(raw: Path, out: Path) -> list[str]:
    return ["--input_dir", str(raw), "--output_dir", str(out), "--num_samples", "256", "--image_size", "32", "--workers", "1"]


def test_all_scenes_prepared_exits_0(tmp_path):
    _scene(tmp_path / "raw" / "room")
    result = _run(*_common(tmp_path / "raw", tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "room").iterdir()) == ["a.npz", "b.npz", "image.png", "manifest.json", "seg.png"]
    assert "Prepared 1 of 1 scenes" in result.stderr


def test_some_scenes_failed_exits_1_and_names_scene_and_file(tmp_path):
    _scene(tmp_path / "raw" / "good")
    _scene(tmp_path / "raw" / "bad")
    (tmp_path / "raw" / "bad" / "broken.obj").write_bytes(b"\x00garbage\xff" * 8)
    result = _run(*_common(tmp_path / "raw", tmp_path / "out"))
    assert result.returncode == 1
    assert "bad/broken.obj" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "good" / "manifest.json").is_file()
    assert not (tmp_path / "out" / "bad").exists()


def test_missing_input_dir_exits_2_with_one_clear_message(tmp_path):
    result = _run(*_common(tmp_path / "missing", tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ")
    assert "input folder does not exist" in result.stderr and "--input_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_arguments_exit_2_without_traceback(tmp_path):
    _scene(tmp_path / "raw" / "room")
    not_a_number = _run("--input_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "out"), "--num_samples", "many")
    assert not_a_number.returncode == 2 and "--num_samples" in not_a_number.stderr
    zero = _run(*_common(tmp_path / "raw", tmp_path / "out")[:4], "--num_samples", "0")
    assert zero.returncode == 2 and "`num_samples`" in zero.stderr
    for result in (not_a_number, zero):
        assert "Traceback" not in result.stderr
