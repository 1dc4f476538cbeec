"""MIDI previews: generated scenes (GLB + turntable PNG) at step 0 and after evaluations, identical on rerun; data preview."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from midi_helpers import midi_env_fixture, midi_profile, one_thread_fixture  # noqa: F401
from PIL import Image

from engine.errors import ProfileError
from engine.families.midi import preview
from engine.train.events import read_events
from engine.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = {"train": {"max_steps": 2, "eval_every": 2}, "data": {"eval_octree_resolution": 24},
            "previews": {"items": 1, "sampling_steps": 2}}


def _rounds(run):
    return [e for e in read_events(run / "events.jsonl") if e["type"] == "preview"]


def test_previews_generate_scenes_and_are_identical_on_rerun(midi_env, tmp_path):
    train(midi_profile(midi_env, tmp_path / "a", **SECTIONS), install_signal_handlers=False)
    run = tmp_path / "a" / "run"
    rounds = _rounds(run)
    assert [r["step"] for r in rounds] == [0, 2]
    name = midi_env["val"][0].name
    for r in rounds:
        assert [i["name"] for i in r["items"]] == [name] and r["skipped"] == []
        item = r["items"][0]
        assert item["png"] == f"previews/step-{r['step']}/{name}.png"
        with Image.open(run / item["png"]) as image:
            assert image.mode == "RGB" and image.width >= 3 * 200 and image.height >= 2 * 200
        if item["glb"] is not None:  # a random tiny base may find no surface; the picture says so
            assert trimesh.load(run / item["glb"], force="scene").geometry
    train(midi_profile(midi_env, tmp_path / "b", **SECTIONS), install_signal_handlers=False)
    for r in rounds:
        for key in ("png", "glb"):
            rel = r["items"][0][key]
            if rel is not None:
                assert (tmp_path / "b" / "run" / rel).read_bytes() == (run / rel).read_bytes()


def test_the_ground_truth_mesh_is_extracted_once_per_run(midi_env, tmp_path, monkeypatch):
    """Marching cubes dominate a round's cost; the frozen VAE's ground truth is the same every round."""
    calls = []
    real = preview.extract_mesh
    monkeypatch.setattr(preview, "extract_mesh", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    sections = {**SECTIONS, "train": {"max_steps": 4, "eval_every": 2}}
    train(midi_profile(midi_env, tmp_path, **sections), install_signal_handlers=False)
    assert [r["step"] for r in _rounds(tmp_path / "run")] == [0, 2, 4]
    assert len(calls) == 3 + 1  # a prediction per round, the ground truth once


def test_vae_task_and_sampling_steps_key(midi_env, tmp_path):
    recipe = midi_profile(midi_env, tmp_path, previews={"sampling_steps": 3})
    assert recipe.profile.previews.sampling_steps == 3
    with pytest.raises(ProfileError, match=r"previews\.sampling_steps"):
        midi_profile(midi_env, tmp_path, previews={"sampling_steps": 0})


def test_data_preview_shows_image_id_map_and_points(midi_env, tmp_path):
    recipe = midi_profile(midi_env, tmp_path)
    paths = recipe.family.preview_data(recipe, tmp_path / "data-preview")
    assert [p.name for p in paths] == [f"{midi_env['train'][0].name}.png"]
    with Image.open(paths[0]) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= 3 * 200
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # an image, not a blank canvas
