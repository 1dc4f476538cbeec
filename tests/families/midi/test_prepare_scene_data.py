"""Tests reading and validating prepared MIDI scenes (load_prepared_scene, list_prepared_scenes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.errors import DataError
from engine.families.midi.prepare import prepare_dataset
from engine.families.midi.scene_data import list_prepared_scenes, load_prepared_scene


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    folder = root / "raw" / "room"
    folder.mkdir(parents=True)
    trimesh.creation.box().export(folder / "a.obj")
    trimesh.creation.icosphere(subdivisions=2).apply_translation([2.0, 0.0, 0.0]).export(folder / "b.obj")
    assert prepare_dataset(root / "raw", root / "out", num_samples=256, image_size=32, workers=1, progress=False).ok
    return root / "out"


@pytest.fixture
def scene_copy(prepared_root, tmp_path) -> Path:
    target = tmp_path / "room"
    shutil.copytree(prepared_root / "room", target)
    return target


def test_loads_surfaces_image_and_ids(prepared_root):
    scene = load_prepared_scene(prepared_root / "room")
    assert scene.name == "room" and scene.instance_names == ["a", "b"]
    surfaces = scene.surfaces()
    assert surfaces.shape == (2, 256, 6) and surfaces.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(surfaces[..., 3:], axis=-1), 1.0, atol=1e-5)
    assert scene.image.dtype == np.uint8 and scene.image.shape == (32, 32, 3)
    assert scene.id_map.dtype == np.uint8 and scene.id_map.shape == (32, 32)
    assert scene.instance_mask(1).sum() == (scene.id_map == 2).sum()
    assert list_prepared_scenes(prepared_root) == [prepared_root / "room"]


def _rewrite_npz(folder: Path, **changes) -> None:
    with np.load(folder / "a.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez(folder / "a.npz", **arrays)


def _nan_points(folder):
    with np.load(folder / "a.npz") as data:
        points = data["surface_points"].copy()
    points[3, 1] = np.nan
    _rewrite_npz(folder, surface_points=points)


def _long_normals(folder):
    with np.load(folder / "a.npz") as data:
        _rewrite_npz(folder, surface_normals=data["surface_normals"] * 1.5)


def _float64_points(folder):
    with np.load(folder / "a.npz") as data:
        _rewrite_npz(folder, surface_points=data["surface_points"].astype(np.float64))


def _out_of_range(folder):
    with np.load(folder / "a.npz") as data:
        _rewrite_npz(folder, surface_points=data["surface_points"] * 3.0)


def _extra_id(folder):
    ids = np.array(Image.open(folder / "seg.png"))
    ids[0, 0] = 7
    Image.fromarray(ids).save(folder / "seg.png")


def _missing_npz(folder):
    (folder / "b.npz").unlink()


def _pickled_npz(folder):
    np.savez(folder / "a.npz", surface_points=np.array([{"x": 1}], dtype=object), surface_normals=np.zeros((1, 3)))


def _bad_manifest(folder):
    (folder / "manifest.json").write_text("{not json")


def _wrong_format_version(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _short_npz(folder):
    with np.load(folder / "a.npz") as data:
        _rewrite_npz(folder, surface_points=data["surface_points"][:10], surface_normals=data["surface_normals"][:10])


@pytest.mark.parametrize(
    ("corrupt", "file", "words"),
    [
        (_nan_points, "a.npz", "NaN"),
        (_long_normals, "a.npz", "unit length"),
        (_float64_points, "a.npz", "float32"),
        (_out_of_range, "a.npz", "[-1, 1]"),
        (_extra_id, "seg.png", "[7]"),
        (_missing_npz, "b.npz", "is missing"),
        (_pickled_npz, "a.npz", "could not be read"),
        (_bad_manifest, "manifest.json", "not valid JSON"),
        (_wrong_format_version, "manifest.json", "`format_version`"),
        (_short_npz, "a.npz", "`num_samples` = 256"),
    ],
)
def test_corrupt_prepared_files_raise_data_error_naming_scene_and_file(scene_copy, corrupt, file, words):
    corrupt(scene_copy)
    with pytest.raises(DataError) as info:
        load_prepared_scene(scene_copy)
    message = str(info.value)
    assert message.startswith(f"room/{file}: ")
    assert words in message
    assert "prepare_data.py" in message


def test_list_prepared_scenes_rejects_missing_or_empty_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_prepared_scenes(tmp_path / "nope")
    (tmp_path / "empty" / ".tmp-half").mkdir(parents=True)
    with pytest.raises(DataError, match="no prepared scenes"):
        list_prepared_scenes(tmp_path / "empty")
