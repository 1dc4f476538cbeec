"""Tests bench_prepare_mesh.py's real-mesh mode: the scenes it builds and the record it writes (no speed asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import bench_prepare_mesh  # noqa: E402


def test_real_scenes_are_one_folder_per_mesh_with_gltf_buffers(tmp_path):
    count = bench_prepare_mesh._write_real_scenes(bench_prepare_mesh.REAL_MESHES, tmp_path / "raw", copies=2)

    folders = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert count == len(folders) == 38  # 19 mesh files (README, licence and the .bin are no meshes), twice
    assert folders[0].startswith("00_") and folders[-1].startswith("01_")
    assert sorted(p.name for p in (tmp_path / "raw" / "00_TestScene").iterdir()) == ["TestScene.bin", "TestScene.gltf"]
    assert [p.name for p in (tmp_path / "raw" / "01_ADIS16480").iterdir()] == ["ADIS16480.STL"]


def test_real_smoke_run_records_meshes_refusals_and_load(tmp_path):
    payload = bench_prepare_mesh.main(["--real", "--smoke", "--copies", "1", "--json-out", str(tmp_path / "r.json")])

    assert payload["config"]["input"] == "real" and payload["config"]["scenes"] == 19
    # Scene files give one instance per node (truck 5, TestScene 9, rgb cube 3, pyramids 12, DAE 1), plus 12
    # one-mesh files; the empty STL and the point cloud are refused.
    assert payload["meshes"] == 42
    assert len(payload["load_average"]["before"]) == 3
    assert json.loads((tmp_path / "r.json").read_text())["meshes"] == 42
