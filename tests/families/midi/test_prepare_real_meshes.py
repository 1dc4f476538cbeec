"""Tests MIDI data preparation on real-world meshes (trimesh's test models, tests/data/meshes/).

Determinism across runs and worker counts, unit normals in a scene mixing units, every skipped or refused
file named in the report, OFF/DAE/3MF and upper-case extensions, NaN vertices, symlinked glTF buffers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh

from engine.errors import DataError
from engine.families.midi.prepare import prepare_dataset
from engine.families.midi.scene_data import load_prepared_scene
from engine.families.midi.surface import face_unit_normals, sample_surface

MESHES = Path(__file__).resolve().parents[2] / "data" / "meshes"


def _copy(names: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(MESHES / name, folder / name)
    return folder


def _prepare(raw: Path, out: Path, **kwargs):
    kwargs = {"num_samples": 256, "image_size": 48, "workers": 1, "progress": False, **kwargs}
    return prepare_dataset(raw, out, **kwargs)


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_trimesh_names_glb_primitives_differently_on_each_load():
    # The reason stable keys are needed: without them instance ids would follow these random names.
    first = set(trimesh.load(MESHES / "CesiumMilkTruck.glb", force="scene").graph.nodes_geometry)
    second = set(trimesh.load(MESHES / "CesiumMilkTruck.glb", force="scene").graph.nodes_geometry)
    assert first != second


def test_two_runs_and_two_worker_counts_give_identical_bytes_and_id_maps(tmp_path):
    raw = tmp_path / "raw"
    _copy(["CesiumMilkTruck.glb", "rgb_cube_with_primitives.gltf"], raw)
    _copy(["TestScene.gltf", "TestScene.bin"], raw / "test_scene")

    runs = [_prepare(raw, tmp_path / name, workers=workers) for name, workers in (("a", 1), ("b", 1), ("c", 2))]

    assert all(r.ok and r.prepared == ["CesiumMilkTruck", "rgb_cube_with_primitives", "test_scene"] for r in runs)
    reference = _all_bytes(tmp_path / "a")
    assert len([name for name in reference if name.endswith(".npz")]) == 5 + 3 + 9
    assert _all_bytes(tmp_path / "b") == reference
    assert _all_bytes(tmp_path / "c") == reference
    # Ids follow the node path (part by part), then geometry order; the mapping is in the manifest.
    truck = json.loads((tmp_path / "a" / "CesiumMilkTruck" / "manifest.json").read_text())
    assert [(e["id"], e["node_path"], e["geometry"], e["num_faces"]) for e in truck["instances"]] == [
        (1, "0/1/2", "Wheels", 768),
        (2, "0/3/4", "Wheels", 768),
        (3, "0/Cesium_Milk_Truck", "Cesium_Milk_Truck", 1744),
        (4, "0/Cesium_Milk_Truck_1", "Cesium_Milk_Truck_1", 56),
        (5, "0/Cesium_Milk_Truck_2", "Cesium_Milk_Truck_2", 288),
    ]
    assert truck["id_map"]["id_order"].startswith("node path")
    scene = load_prepared_scene(tmp_path / "a" / "test_scene")
    assert scene.instance_names == ["Cube_1", "Cube", "Cylinder", "Plane", "Sphere",
                                    "d8_1-d8_1", "d8_1-d8_1__1", "d8-d8_1", "d8-d8_1__1"]


def test_mixed_units_scene_has_unit_normals_and_names_the_part_too_small_to_see(tmp_path):
    raw = tmp_path / "raw"
    _copy(["ADIS16480.STL", "notenoughindices.obj"], raw / "mixed")
    # The trap: in the shared frame the 0.047-unit part shrinks ~20000x and trimesh's normals vanish.
    sensor = trimesh.load(MESHES / "ADIS16480.STL")
    shrunk = sensor.copy().apply_scale(1.0 / 500.0)
    assert (np.linalg.norm(shrunk.face_normals, axis=1) == 0).any()

    report = _prepare(raw, tmp_path / "out", num_samples=20480, image_size=64)

    assert report.ok
    scene = load_prepared_scene(tmp_path / "out" / "mixed")
    assert scene.instance_names == ["ADIS16480", "notenoughindices"]
    for normals in scene.surface_normals:
        np.testing.assert_allclose(np.linalg.norm(normals.astype(np.float64), axis=1), 1.0, atol=1e-6)
    # The big triangle lies in one plane: all its normals are the same unit vector.
    assert np.abs(scene.surface_normals[1] - scene.surface_normals[1][0]).max() < 1e-6
    manifest = scene.manifest
    assert [(e["name"], e["visible"]) for e in manifest["instances"]] == [("ADIS16480", False), ("notenoughindices", True)]
    assert manifest["instances"][0]["pixels"] == 0 and manifest["image"]["visible_instances"] == 1
    [warning] = [p for p in report.warnings if p.scene == "mixed" and "no pixels" in p.message]
    assert "1 of 2 instances" in warning.message and "'ADIS16480'" in warning.message


def test_sampled_normals_are_unit_for_tiny_meshes_and_skip_degenerate_faces():
    tiny = trimesh.Trimesh([[0, 0, 0], [1e-9, 0, 0], [0, 1e-9, 0], [2e-9, 0, 0]], [[0, 1, 2], [0, 1, 3]], process=False)
    normals, weight = face_unit_normals(tiny)
    assert weight[1] == 0.0 and weight[0] > 0.0  # face 1 is collinear
    np.testing.assert_allclose(normals[0], [0.0, 0.0, 1.0])
    points, sampled = sample_surface(tiny, 500, np.random.default_rng(0))
    np.testing.assert_allclose(sampled, np.tile([0.0, 0.0, 1.0], (500, 1)))
    assert points[:, :2].min() >= 0.0 and points[:, :2].sum(axis=1).max() <= 1e-9 * (1 + 1e-9)


def _build_everything_raw(raw: Path) -> None:
    _copy(["ballA.off", "blue_cube.dae", "pyramids.3mf", "unit_cube.STL", "comments.off"], raw / "formats")
    (raw / "formats" / "notes.txt").write_text("not a mesh")
    (raw / "formats" / "texture.png").write_bytes(b"\x89PNG")
    (raw / "formats" / ".DS_Store").write_bytes(b"\x00")
    _copy(["box.obj"], raw / "formats" / "more")
    _copy(["empty.stl", "points_ascii.ply", "featuretype.STL", "pyramids.3mf", "README.md"], raw)
    _copy(["box.obj"], raw / ".cache")
    np.save(raw / "loose.npy", np.zeros((4, 6)))
    linked = _copy(["TestScene.gltf"], raw / "linked")
    (linked / "TestScene.bin").symlink_to(MESHES / "TestScene.bin")


def test_every_skipped_or_refused_file_is_named_and_other_formats_are_read(tmp_path):
    raw = tmp_path / "raw"
    _build_everything_raw(raw)

    report = _prepare(raw, tmp_path / "out")

    assert report.prepared == ["featuretype", "formats", "pyramids"]
    assert report.failed == ["empty", "linked", "points_ascii"]
    errors = {(p.scene, p.file): p.message for p in report.errors}
    assert sorted(errors) == [("empty", "empty.stl"), ("linked", "TestScene.gltf"), ("points_ascii", "points_ascii.ply")]
    assert "no triangles" in errors[("empty", "empty.stl")]
    assert "point cloud of 5 points" in errors[("points_ascii", "points_ascii.ply")]
    linked = errors[("linked", "TestScene.gltf")]
    assert "symbolic link 'TestScene.bin'" in linked and str((MESHES / "TestScene.bin").resolve()) in linked
    assert "Re-export" not in linked and "cp --remove-destination" in linked
    skipped = {(p.scene, p.file) for p in report.skipped}
    assert skipped == {(".", ".cache"), (".", "README.md"), (".", "loose.npy"), ("formats", ".DS_Store"), ("formats", "more"),
                       ("formats", "notes.txt"), ("formats", "texture.png")}
    for problem in report.skipped:
        assert problem.message.startswith("skipped: ")
    assert "hidden" in next(p.message for p in report.skipped if p.file == ".cache")
    notes = next(p.message for p in report.skipped if p.file == "notes.txt")
    assert "'.txt'" in notes and all(suffix in notes for suffix in (".3mf", ".dae", ".off", ".stl", ".npy"))
    payload = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert {(p["scene"], p["file"]) for p in payload["problems"] if p["severity"] == "skipped"} == skipped

    formats = load_prepared_scene(tmp_path / "out" / "formats")
    assert formats.instance_names == ["ballA", "blue_cube", "comments", "pyramids", "unit_cube"]
    assert [e["source"] for e in formats.manifest["instances"]] == [
        "ballA.off", "blue_cube.dae", "comments.off", "pyramids.3mf", "unit_cube.STL"]
    assert formats.manifest["instances"][3]["num_nodes"] == 12
    pyramids = load_prepared_scene(tmp_path / "out" / "pyramids")  # a lone scene file: one instance per node
    assert pyramids.num_instances == 12 and pyramids.instance_names[:3] == ["Box", "Box_1", "Box_2"]
    assert load_prepared_scene(tmp_path / "out" / "featuretype").manifest["instances"][0]["num_faces"] == 3476


def test_an_input_folder_of_only_unread_files_names_them(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "scan.xyz").write_text("0 0 0\n")
    with pytest.raises(DataError, match=r"no scenes found, got only entries that are not read: \['scan.xyz'\]"):
        _prepare(tmp_path / "raw", tmp_path / "out")


def test_nan_vertices_drop_their_faces_and_say_how_many(tmp_path):
    folder = tmp_path / "raw" / "nan"
    folder.mkdir(parents=True)
    tetra = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nv nan 0 0\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\nf 1 2 5\n"
    (folder / "tetra.obj").write_text(tetra)
    _copy(["nancolor.obj"], folder)

    report = _prepare(tmp_path / "raw", tmp_path / "out")

    assert report.ok
    [warning] = [p for p in report.warnings if p.file == "tetra.obj"]
    assert "1 vertices with NaN or inf coordinates" in warning.message and "dropped the 1 of 5 faces" in warning.message
    assert "other 4" in warning.message
    scene = load_prepared_scene(tmp_path / "out" / "nan")
    entry = scene.manifest["instances"][1]
    assert (entry["name"], entry["num_faces"], entry["dropped_faces"], entry["watertight"]) == ("tetra", 4, 1, True)
    assert all(np.isfinite(p).all() for p in scene.surface_points)  # NaN colours of nancolor.obj never leak
    assert not [p for p in report.warnings if p.file == "nancolor.obj" and "NaN" in p.message]
