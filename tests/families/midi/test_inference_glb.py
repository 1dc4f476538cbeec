"""Tests MIDI inference: a scene file with one named mesh per instance, and clear errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from midi_helpers import midi_env_fixture, midi_profile, one_thread_fixture  # noqa: F401
from PIL import Image

from engine.errors import DataError
from engine.families.midi.inference import load_scene_inputs, run_inference
from engine.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(tmp_path, ids=(1, 2, 3), size=(32, 32), seg_size=None):
    rgb = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    seg = np.zeros(seg_size or size, dtype=np.uint8)
    for k, value in enumerate(ids):
        seg[4 + 8 * k : 10 + 8 * k, 4:20] = value
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(seg).save(tmp_path / "seg.png")
    return tmp_path / "rgb.png", tmp_path / "seg.png"


def _infer(env, rgb, seg, output, lora=None, **kwargs):
    options = {"steps": 2, "guidance_scale": 3.0, "seed": 0, "octree_resolution": 16, "device": "cpu"}
    options.update(kwargs)
    return run_inference(env["base"], lora, rgb, seg, output, **options)


def test_glb_holds_one_named_mesh_per_instance_with_an_adapter(midi_env, tmp_path):
    train(midi_profile(midi_env, tmp_path, train={"max_steps": 1}), install_signal_handlers=False)
    rgb, seg = _images(tmp_path, ids=(1, 2, 5))
    out = _infer(midi_env, rgb, seg, tmp_path / "out" / "result.glb", lora=tmp_path / "run" / "adapter")
    scene = trimesh.load(out)
    assert isinstance(scene, trimesh.Scene)
    assert sorted(scene.geometry) == ["instance_001", "instance_002", "instance_005"]
    assert all(len(mesh.faces) > 0 for mesh in scene.geometry.values())
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.glb"]  # no temporary file left


def test_same_seed_same_scene_and_obj_ply_outputs(midi_env, tmp_path):
    rgb, seg = _images(tmp_path, ids=(1, 2))
    a = trimesh.load(_infer(midi_env, rgb, seg, tmp_path / "a.glb"))
    b = trimesh.load(_infer(midi_env, rgb, seg, tmp_path / "b.glb"))
    for name in a.geometry:
        np.testing.assert_allclose(a.geometry[name].vertices, b.geometry[name].vertices)
    obj = _infer(midi_env, rgb, seg, tmp_path / "scene.obj")
    assert "instance_001" in obj.read_text() and "instance_002" in obj.read_text()
    ply = trimesh.load(_infer(midi_env, rgb, seg, tmp_path / "scene.ply"))
    assert len(ply.faces) == sum(len(m.faces) for m in a.geometry.values())


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing_rgb", "scene image not found"),
        ("no_instances", "the segmentation has no instances"),
        ("size_mismatch", "segmentation size must equal the image size 32x32 (WxH), got 16x16"),
        ("bad_suffix", "unknown scene file type, got '.fbx'. Use one of .glb, .obj, .ply"),
    ],
)
def test_bad_inputs_raise_data_errors_naming_file_and_fix(midi_env, tmp_path, case, fragment):
    rgb, seg = _images(tmp_path, ids=() if case == "no_instances" else (1, 2),
                       seg_size=(16, 16) if case == "size_mismatch" else None)
    output = tmp_path / ("out.fbx" if case == "bad_suffix" else "out.glb")
    if case == "missing_rgb":
        rgb = tmp_path / "nope.png"
    with pytest.raises(DataError) as info:
        _infer(midi_env, rgb, seg, output)
    message = str(info.value)
    assert fragment in message
    assert message.split(":")[0] in {str(rgb), str(seg), str(output)}
    assert not output.exists()


def test_colour_id_maps_are_read_as_instances(tmp_path):
    rgb = np.full((8, 8, 3), 128, dtype=np.uint8)
    seg = np.zeros((8, 8, 3), dtype=np.uint8)
    seg[:4, :4] = (255, 0, 0)
    seg[4:, 4:] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(seg).save(tmp_path / "seg.png")
    inputs = load_scene_inputs(tmp_path / "rgb.png", tmp_path / "seg.png")
    assert inputs.ids == [1, 2] and inputs.masks.shape == (2, 8, 8)
    assert int(inputs.masks.sum()) == 32
