"""Tests MIDI data preparation on valid input: mesh formats, GLB scenes, one shared frame, normals, id maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.families.midi.prepare import prepare_dataset
from engine.families.midi.scene_data import load_prepared_scene

SAMPLES = 512
SIZE = 64


def _box(center, size: float = 1.0) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=(size, size, size))
    mesh.apply_translation(center)
    return mesh


def _sphere(center, radius: float = 1.0) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    mesh.apply_translation(center)
    return mesh


def _prepare(raw: Path, out: Path, **kwargs):
    kwargs = {"num_samples": SAMPLES, "image_size": SIZE, "workers": 1, "progress": False, **kwargs}
    return prepare_dataset(raw, out, **kwargs)


def _back_to_input_frame(scene, index: int) -> np.ndarray:
    norm = scene.manifest["normalization"]
    return scene.surface_points[index].astype(np.float64) * norm["scale"] + np.asarray(norm["center"])


@pytest.mark.parametrize("suffix", [".obj", ".glb", ".ply", ".stl"])
def test_each_mesh_format_is_prepared_into_one_shared_frame(tmp_path, suffix):
    folder = tmp_path / "raw" / "room"
    folder.mkdir(parents=True)
    _box([0.0, 0.0, 0.0]).export(folder / f"a_box{suffix}")
    _sphere([3.0, 0.0, 0.0]).export(folder / f"b_ball{suffix}")

    report = _prepare(tmp_path / "raw", tmp_path / "out")

    assert report.ok and report.prepared == ["room"] and report.errors == []
    scene = load_prepared_scene(tmp_path / "out" / "room")
    assert scene.instance_names == ["a_box", "b_ball"]
    for points, normals in zip(scene.surface_points, scene.surface_normals):
        assert points.dtype == np.float32 and points.shape == (SAMPLES, 3)
        assert normals.dtype == np.float32 and normals.shape == (SAMPLES, 3)
    # Joint bounding box x in [-0.5, 4.0] is the longest axis, so it spans [-1, 1] exactly.
    all_points = np.concatenate(scene.surface_points)
    assert np.abs(all_points).max() <= 1.0 + 1e-6
    assert all_points[:, 0].min() == pytest.approx(-1.0, abs=0.02)
    assert all_points[:, 0].max() == pytest.approx(1.0, abs=0.02)
    assert scene.manifest["normalization"]["scale"] == pytest.approx(2.25, rel=1e-6)
    # One frame for both: mapping back with the same centre/scale restores each original surface.
    box_points = _back_to_input_frame(scene, 0)
    ball_points = _back_to_input_frame(scene, 1)
    assert np.abs(box_points).max() == pytest.approx(0.5, abs=1e-4)
    np.testing.assert_allclose(np.abs(box_points).max(axis=1), 0.5, atol=1e-4)  # every sample on a box face
    ball_radius = np.linalg.norm(ball_points - [3.0, 0.0, 0.0], axis=1)
    assert ball_radius.min() > 0.98 and ball_radius.max() <= 1.0 + 1e-4
    assert scene.image.shape == (SIZE, SIZE, 3) and scene.id_map.shape == (SIZE, SIZE)
    assert scene.manifest["image"]["source"] == "rendered"
    assert set(np.unique(scene.id_map)) <= {0, 1, 2} and len(np.unique(scene.id_map)) >= 2
    assert [i["source"] for i in scene.manifest["instances"]] == [f"a_box{suffix}", f"b_ball{suffix}"]


def _three_node_glb() -> bytes:
    scene = trimesh.Scene()
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    translate = trimesh.transformations.translation_matrix
    scene.add_geometry(box, node_name="table", geom_name="box", transform=translate([0.0, 0.0, 0.0]))
    scene.add_geometry(box, node_name="chair", geom_name="box", transform=translate([3.0, 0.0, 0.0]))
    scene.add_geometry(_sphere([0.0, 0.0, 0.0], 0.5), node_name="lamp", geom_name="ball", transform=translate([0.0, 2.0, -3.0]))
    return scene.export(file_type="glb")


@pytest.mark.parametrize("layout", ["file_in_input_dir", "file_in_scene_folder"])
def test_glb_scene_nodes_become_instances_with_transforms_applied(tmp_path, layout):
    raw = tmp_path / "raw"
    target = raw / "house.glb" if layout == "file_in_input_dir" else raw / "house" / "scene.glb"
    target.parent.mkdir(parents=True)
    target.write_bytes(_three_node_glb())

    report = _prepare(raw, tmp_path / "out")

    assert report.ok and report.prepared == ["house"]
    scene = load_prepared_scene(tmp_path / "out" / "house")
    assert scene.instance_names == ["chair", "lamp", "table"]  # sorted node names = id order
    expected_centres = {"chair": [3.0, 0.0, 0.0], "lamp": [0.0, 2.0, -3.0], "table": [0.0, 0.0, 0.0]}
    for index, name in enumerate(scene.instance_names):
        lo, hi = _back_to_input_frame(scene, index).min(0), _back_to_input_frame(scene, index).max(0)
        np.testing.assert_allclose((lo + hi) / 2.0, expected_centres[name], atol=0.05)


def test_sphere_normals_are_unit_and_point_outward(tmp_path):
    folder = tmp_path / "raw" / "ball"
    folder.mkdir(parents=True)
    _sphere([5.0, -2.0, 1.0], 2.0).export(folder / "ball.ply")

    assert _prepare(tmp_path / "raw", tmp_path / "out").ok
    scene = load_prepared_scene(tmp_path / "out" / "ball")
    points, normals = scene.surface_points[0], scene.surface_normals[0]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    radial = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert (np.sum(normals * radial, axis=1) > 0.95).all()


def test_inward_wound_watertight_mesh_gets_outward_normals(tmp_path):
    folder = tmp_path / "raw" / "inverted"
    folder.mkdir(parents=True)
    ball = _sphere([0.0, 0.0, 0.0])
    ball.invert()
    ball.export(folder / "ball.obj")

    assert _prepare(tmp_path / "raw", tmp_path / "out").ok
    scene = load_prepared_scene(tmp_path / "out" / "inverted")
    radial = scene.surface_points[0] / np.linalg.norm(scene.surface_points[0], axis=1, keepdims=True)
    assert (np.sum(scene.surface_normals[0] * radial, axis=1) > 0.95).all()


def test_id_map_is_resized_nearest_and_image_to_image_size(tmp_path):
    folder = tmp_path / "raw" / "pair"
    folder.mkdir(parents=True)
    _box([0.0, 0.0, 0.0]).export(folder / "a.obj")
    _box([2.0, 0.0, 0.0]).export(folder / "b.obj")
    # Only ids 0 and 2 on a fine checkerboard: any interpolating resize would invent id 1 at the edges.
    ids = ((np.indices((100, 100)) // 5).sum(axis=0) % 2 * 2).astype(np.uint8)
    Image.fromarray(ids).save(folder / "seg.png")
    rgb = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "image.png")

    report = _prepare(tmp_path / "raw", tmp_path / "out")

    assert report.ok
    scene = load_prepared_scene(tmp_path / "out" / "pair")
    assert scene.id_map.dtype == np.uint8 and scene.id_map.shape == (SIZE, SIZE)
    assert set(np.unique(scene.id_map).tolist()) == {0, 2}
    assert scene.image.shape == (SIZE, SIZE, 3)
    assert scene.manifest["image"]["source"] == "provided"
    warned = [(p.file, p.message) for p in report.warnings]
    assert any(file == "seg.png" and "['a']" in message for file, message in warned)


def test_same_seed_gives_identical_files_inline_and_with_a_process_pool(tmp_path):
    for index in range(3):
        folder = tmp_path / "raw" / f"scene_{index}"
        folder.mkdir(parents=True)
        _box([index, 0.0, 0.0]).export(folder / "a.ply")
        _sphere([0.0, 2.0, 0.0], 0.5).export(folder / "b.ply")

    assert _prepare(tmp_path / "raw", tmp_path / "inline", workers=1, seed=3).ok
    assert _prepare(tmp_path / "raw", tmp_path / "pool", workers=2, seed=3).ok
    assert _prepare(tmp_path / "raw", tmp_path / "other_seed", workers=1, seed=4).ok

    for index in range(3):
        for name in ("a.npz", "b.npz", "image.png", "seg.png"):
            inline = (tmp_path / "inline" / f"scene_{index}" / name).read_bytes()
            assert inline == (tmp_path / "pool" / f"scene_{index}" / name).read_bytes()
        other = np.load(tmp_path / "other_seed" / f"scene_{index}" / "a.npz")["surface_points"]
        assert not np.array_equal(other, load_prepared_scene(tmp_path / "inline" / f"scene_{index}").surface_points[0])


def test_rerun_replaces_a_prepared_scene_and_leaves_no_temporary_folders(tmp_path):
    folder = tmp_path / "raw" / "room"
    folder.mkdir(parents=True)
    _box([0.0, 0.0, 0.0]).export(folder / "a.obj")
    assert _prepare(tmp_path / "raw", tmp_path / "out", num_samples=256).ok
    assert _prepare(tmp_path / "raw", tmp_path / "out", num_samples=128).ok

    assert load_prepared_scene(tmp_path / "out" / "room").surface_points[0].shape == (128, 3)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_triposg_pickled_npy_needs_the_explicit_flag(tmp_path):
    folder = tmp_path / "raw" / "points"
    folder.mkdir(parents=True)
    sphere = _sphere([0.0, 0.0, 0.0], 2.0)
    points, face_index = trimesh.sample.sample_surface(sphere, 300, seed=0)
    surface = {"surface_points": points, "surface_normals": sphere.face_normals[face_index]}
    with open(folder / "ball.npy", "wb") as handle:
        np.save(handle, np.array(surface, dtype=object), allow_pickle=True)
    _box([0.0, 0.0, 0.0]).export(folder / "cube.obj")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(folder / "image.png")
    Image.fromarray(np.ones((32, 32), np.uint8)).save(folder / "seg.png")

    refused = _prepare(tmp_path / "raw", tmp_path / "out")
    assert refused.failed == ["points"]
    assert [(p.scene, p.file) for p in refused.errors] == [("points", "ball.npy")]
    assert "--allow_pickle_npy" in refused.errors[0].message

    accepted = _prepare(tmp_path / "raw", tmp_path / "out", allow_pickle_npy=True)
    assert accepted.ok
    scene = load_prepared_scene(tmp_path / "out" / "points")
    assert scene.instance_names == ["ball", "cube"]
    radius = np.linalg.norm(_back_to_input_frame(scene, 0), axis=1)
    assert radius.min() > 1.9 and radius.max() < 2.0 + 1e-4
