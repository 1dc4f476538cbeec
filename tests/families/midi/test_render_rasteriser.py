"""Tests the numpy software rasteriser: ids where instances are, the z-test, shading, cameras and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trimesh

from engine.families.midi.render import CameraPose, render_scene, sample_camera


def _sphere(center, radius: float, subdivisions: int = 3) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(center)
    return mesh


def test_sphere_at_centre_has_its_id_in_the_middle_and_background_in_the_corners():
    rgb, ids = render_scene([_sphere([0, 0, 0], 0.5)], image_size=64, elevation_deg=15.0, azimuth_deg=40.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert ids.dtype == np.uint8 and ids.shape == (64, 64)
    assert ids[32, 32] == 1
    for corner in [(0, 0), (0, 63), (63, 0), (63, 63)]:
        assert ids[corner] == 0
        assert rgb[corner].tolist() == [255, 255, 255]
    assert (rgb[ids == 1] < 255).any(axis=1).all()  # shaded, never pure white
    assert set(np.unique(ids).tolist()) == {0, 1}


def test_auto_distance_fits_the_scene_inside_the_frame():
    _, ids = render_scene([_sphere([0, 0, 0], 1.0)], image_size=64, elevation_deg=0.0, azimuth_deg=0.0)
    rows, cols = np.nonzero(ids)
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < 63 and cols.max() < 63
    assert rows.max() - rows.min() > 40  # and fills most of it


@pytest.mark.parametrize(
    ("azimuth_deg", "centre_id"),
    [(0.0, "front"), (180.0, "back")],
)
@pytest.mark.parametrize("order", ["front_first", "back_first"])
def test_nearer_instance_wins_the_depth_test(azimuth_deg, centre_id, order):
    front = _sphere([0, 0, 0.6], 0.3)  # towards +z, where azimuth 0 looks from
    back = _sphere([0, 0, -0.6], 0.3)
    meshes = [front, back] if order == "front_first" else [back, front]
    ids_of = {"front": meshes.index(front) + 1, "back": meshes.index(back) + 1}
    _, ids = render_scene(meshes, image_size=64, elevation_deg=0.0, azimuth_deg=azimuth_deg, distance=4.0)
    assert ids[32, 32] == ids_of[centre_id]
    # The hidden sphere is exactly behind: the visible one covers it completely (perspective shrinks it).
    assert ids_of["back" if centre_id == "front" else "front"] not in set(np.unique(ids).tolist())


def test_partially_hidden_instance_shows_around_the_nearer_one():
    near = _sphere([0, 0, 0.6], 0.2)
    far = _sphere([0, 0, -0.6], 0.6)
    _, ids = render_scene([far, near], image_size=64, elevation_deg=0.0, azimuth_deg=0.0, distance=4.0)
    assert ids[32, 32] == 2
    assert (ids == 1).sum() > (ids == 2).sum() > 0


def test_lambert_shading_is_brighter_facing_the_light():
    box = trimesh.creation.box(extents=(1, 1, 1))
    lit, _ = render_scene([box], image_size=64, elevation_deg=0.0, azimuth_deg=0.0, light_dir=(0, 0, 1), colors=np.ones((1, 3)))
    grazing, _ = render_scene([box], image_size=64, elevation_deg=0.0, azimuth_deg=0.0, light_dir=(1, 0, 0.2), colors=np.ones((1, 3)))
    assert lit[32, 32].tolist() == [255, 255, 255]
    assert grazing[32, 32, 0] < 120


def test_many_instances_use_a_uint16_id_map():
    triangles = [(np.array([[i * 0.01, 0, 0], [i * 0.01 + 0.005, 0, 0], [i * 0.01, 0.5, 0]]), np.array([[0, 1, 2]])) for i in range(300)]
    _, ids = render_scene(triangles, image_size=32, elevation_deg=0.0, azimuth_deg=0.0)
    assert ids.dtype == np.uint16 and ids.max() <= 300


def test_empty_scene_is_all_background():
    rgb, ids = render_scene([], image_size=16)
    assert (rgb == 255).all() and (ids == 0).all()


def test_sample_camera_draws_midi_ranges():
    rng = np.random.default_rng(0)
    poses = [sample_camera(rng) for _ in range(500)]
    elevations = np.array([p.elevation_deg for p in poses])
    azimuths = np.array([p.azimuth_deg for p in poses])
    assert elevations.min() >= 0.0 and elevations.max() < 30.0 and elevations.max() > 28.0
    assert azimuths.min() >= 0.0 and azimuths.max() < 360.0 and np.ptp(azimuths) > 350.0
    assert sample_camera(np.random.default_rng(5)) == sample_camera(np.random.default_rng(5))
    assert isinstance(poses[0], CameraPose)


def test_five_thousand_triangles_render_quickly():
    mesh = _sphere([0, 0, 0], 0.8, subdivisions=4)
    assert len(mesh.faces) == 5120
    start = time.perf_counter()
    _, ids = render_scene([mesh], image_size=256, elevation_deg=20.0, azimuth_deg=30.0)
    assert time.perf_counter() - start < 2.0
    assert (ids == 1).sum() > 0.2 * 256 * 256
