"""Tests the synthetic MIDI scene generator and that its raw scenes go through the real preparation path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.errors import DataError
from engine.families.midi.prepare import prepare_dataset
from engine.families.midi.scene_data import list_prepared_scenes, load_prepared_scene
from engine.families.midi.synthetic import DOMAINS, generate_synthetic_scene, write_synthetic_raw_scenes


def test_generation_is_deterministic_by_seed():
    first, again, other = (generate_synthetic_scene(s, "A") for s in (11, 11, 12))
    assert first.names == again.names
    for a, b in zip(first.meshes, again.meshes):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)
    same_layout = first.names == other.names and all(
        a.vertices.shape == b.vertices.shape and np.allclose(a.vertices, b.vertices) for a, b in zip(first.meshes, other.meshes)
    )
    assert not same_layout


@pytest.mark.parametrize("domain", ["A", "B"])
def test_primitives_rest_on_the_floor_without_overlapping(domain):
    for seed in range(15):
        scene = generate_synthetic_scene(seed, domain)
        assert 1 <= len(scene.meshes) <= 5
        assert sorted(scene.names) == scene.names  # sorted order is the id order
        footprints = []
        for mesh in scene.meshes:
            assert mesh.bounds[0, 1] == pytest.approx(0.0, abs=1e-9)
            assert mesh.is_watertight
            centre = mesh.bounds.mean(axis=0)[[0, 2]]
            radius = np.linalg.norm(mesh.vertices[:, [0, 2]] - centre, axis=1).max()
            footprints.append((centre, radius))
        for i, (ci, ri) in enumerate(footprints):
            for cj, rj in footprints[i + 1 :]:
                assert np.linalg.norm(ci - cj) > ri + rj


def test_domain_b_shifts_the_primitive_mix_and_proportions():
    def stats(domain):
        kinds, aspects = [], []
        for seed in range(40):
            scene = generate_synthetic_scene(seed, domain)
            kinds += scene.kinds
            aspects += [np.ptp(m.vertices[:, 1]) / np.ptp(m.vertices[:, 0]) for m in scene.meshes]
        cone_torus = np.mean([k in ("cone", "torus") for k in kinds])
        return cone_torus, np.std(np.log(aspects))

    a_mix, a_spread = stats("A")
    b_mix, b_spread = stats("B")
    assert b_mix > a_mix + 0.3
    assert b_spread > a_spread
    assert set(DOMAINS) == {"A", "B"}


def test_unknown_domain_is_a_data_error():
    with pytest.raises(DataError, match="`domain`"):
        generate_synthetic_scene(0, "C")


def test_raw_scenes_are_deterministic_and_prepare_into_training_data(tmp_path):
    first = write_synthetic_raw_scenes(tmp_path / "raw", num_scenes=3, domain="B", seed=5, image_size=64)
    again = write_synthetic_raw_scenes(tmp_path / "raw_again", num_scenes=3, domain="B", seed=5, image_size=64)
    assert [f.name for f in first] == ["scene_0000", "scene_0001", "scene_0002"]
    for a, b in zip(first, again):
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes()
        meshes = [n for n in names if n.endswith(".ply")]
        ids = np.array(Image.open(a / "seg.png"))
        assert ids.shape == (64, 64) and set(np.unique(ids).tolist()) <= set(range(len(meshes) + 1))
        assert len(np.unique(ids)) >= 2

    report = prepare_dataset(tmp_path / "raw", tmp_path / "out", num_samples=512, image_size=32, workers=1, progress=False)
    assert report.ok and report.errors == []
    scenes = [load_prepared_scene(p) for p in list_prepared_scenes(tmp_path / "out")]
    assert len(scenes) == 3
    for folder, scene in zip(first, scenes):
        assert scene.instance_names == sorted(p.stem for p in folder.glob("*.ply"))
        assert scene.manifest["image"]["source"] == "provided"
        assert scene.surfaces().shape == (len(scene.instance_names), 512, 6)
