"""Tests that bad raw input is reported per scene and file while the other scenes are still prepared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.errors import DataError
from engine.families.midi.prepare import prepare_dataset
from engine.families.midi.scene_data import list_prepared_scenes, load_prepared_scene


def _two_boxes(folder: Path) -> None:
    folder.mkdir(parents=True)
    trimesh.creation.box().export(folder / "a.obj")
    trimesh.creation.box().apply_translation([2.0, 0.0, 0.0]).export(folder / "b.obj")


def _save_pair(folder: Path, image_shape: tuple[int, int], ids: np.ndarray) -> None:
    Image.fromarray(np.full((*image_shape, 3), 128, np.uint8)).save(folder / "image.png")
    Image.fromarray(ids.astype(np.uint8)).save(folder / "seg.png")


def _build_raw(raw: Path) -> None:
    _two_boxes(raw / "good")

    _two_boxes(raw / "garbage_obj")
    (raw / "garbage_obj" / "junk.obj").write_bytes(b"\x00\xff\x13 not a mesh \x7f" * 20)

    _two_boxes(raw / "empty_file")
    (raw / "empty_file" / "empty.stl").write_bytes(b"")

    _two_boxes(raw / "zero_area")
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], [[0, 1, 2], [1, 2, 3]], process=False)
    flat.export(raw / "zero_area" / "flat.ply")

    _two_boxes(raw / "extra_id")
    ids = np.zeros((32, 32), np.uint8)
    ids[:8], ids[8:16], ids[16:24] = 1, 2, 3
    _save_pair(raw / "extra_id", (32, 32), ids)

    _two_boxes(raw / "wrong_aspect")
    _save_pair(raw / "wrong_aspect", (32, 48), np.ones((32, 48)))

    _two_boxes(raw / "seg_size")
    _save_pair(raw / "seg_size", (32, 32), np.ones((16, 16)))

    _two_boxes(raw / "bad_image")
    _save_pair(raw / "bad_image", (32, 32), np.ones((32, 32)))
    (raw / "bad_image" / "image.png").write_bytes(b"\x89PNG broken")

    _two_boxes(raw / "seg_only")
    Image.fromarray(np.ones((32, 32), np.uint8)).save(raw / "seg_only" / "seg.png")

    (raw / "no_meshes").mkdir()

    (raw / "open_box").mkdir()
    box = trimesh.creation.box()
    box.update_faces(np.arange(1, len(box.faces)))
    box.export(raw / "open_box" / "open.obj")


# (scene, file, words the message must contain)
EXPECTED_ERRORS = [
    ("bad_image", "image.png", "could not be read as an image"),
    ("empty_file", "empty.stl", "no triangles"),
    ("extra_id", "seg.png", "[3]"),
    ("garbage_obj", "junk.obj", "no triangles"),
    ("no_meshes", ".", "no mesh files"),
    ("seg_only", "seg.png", "no image.png"),
    ("seg_size", "seg.png", "got 16x16"),
    ("wrong_aspect", "image.png", "got 48x32"),
    ("zero_area", "flat.ply", "degenerate"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    _build_raw(root / "raw")
    report = prepare_dataset(root / "raw", root / "out", num_samples=256, image_size=32, workers=2, progress=False)
    return root, report


def test_bad_scenes_fail_and_good_scenes_are_written(prepared):
    root, report = prepared
    assert not report.ok
    assert report.prepared == ["good", "open_box"]
    assert report.failed == sorted(scene for scene, _, _ in EXPECTED_ERRORS)
    assert [p.name for p in list_prepared_scenes(root / "out")] == ["good", "open_box"]
    assert sorted(p.name for p in (root / "out").iterdir() if p.is_dir()) == ["good", "open_box"]
    assert load_prepared_scene(root / "out" / "good").num_instances == 2


@pytest.mark.parametrize(("scene", "file", "words"), EXPECTED_ERRORS)
def test_each_problem_names_its_scene_and_file(prepared, scene, file, words):
    _, report = prepared
    errors = [p for p in report.errors if p.scene == scene]
    assert [(p.scene, p.file) for p in errors] == [(scene, file)]
    assert words in errors[0].message
    assert str(errors[0]).startswith(f"{scene}/{file}: ")


def test_non_watertight_mesh_is_a_warning_and_still_sampled(prepared):
    root, report = prepared
    warnings = [(p.scene, p.file) for p in report.warnings]
    assert ("open_box", "open.obj") in warnings
    message = next(p.message for p in report.warnings if p.file == "open.obj")
    assert "3 boundary edges, 0 non-manifold edges" in message
    scene = load_prepared_scene(root / "out" / "open_box")
    assert scene.surface_points[0].shape == (256, 3)


def test_report_file_lists_every_problem(prepared):
    root, report = prepared
    payload = json.loads((root / "out" / "prepare_report.json").read_text())
    assert payload["failed"] == report.failed
    assert len(payload["problems"]) == len(report.problems)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"num_samples": 0}, "`num_samples`"),
        ({"image_size": 4}, "`image_size`"),
        ({"workers": 0}, "`workers`"),
    ],
)
def test_invalid_arguments_raise_data_error(tmp_path, kwargs, words):
    _two_boxes(tmp_path / "raw" / "s")
    with pytest.raises(DataError, match=words):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", progress=False, **kwargs)


def test_missing_and_empty_input_folders_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="input folder does not exist"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no scenes found"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", progress=False)
