"""SceneSplat previews: ground truth vs prediction during training (semseg, lang), identical on rerun; data preview."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tiny_scenesplat import tiny_profile, train_tiny_run

from engine.render import class_colors
from engine.train.events import read_events


def _rounds(run):
    return [e for e in read_events(run / "events.jsonl") if e["type"] == "preview"]


def _colours(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        pixels = np.asarray(image).reshape(-1, 3)
    return {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}


def test_semseg_previews_at_step_0_and_the_final_evaluation(semseg_run):
    rounds = _rounds(semseg_run)
    assert [r["step"] for r in rounds] == [0, 2]  # the tiny run evaluates once, at its end
    for r in rounds:
        assert [i["name"] for i in r["items"]] == ["synthetic_val_0000"] and r["skipped"] == []
        png = semseg_run / r["items"][0]["png"]
        assert png.is_file() and r["items"][0]["glb"] is None
        with Image.open(png) as image:
            width, height = image.size
        assert width > 2 * 256 and height > 2 * 256  # two columns of two stacked views, plus title and legend
        # class colours are drawn (ground truth, prediction and legend)
        assert len(_colours(png) & {tuple(int(v) for v in c) for c in class_colors(6)}) >= 2
    evals = [e for e in read_events(semseg_run / "events.jsonl") if e["type"] == "eval"]
    assert evals[-1]["preview_seconds"] > 0


def test_lang_previews_draw_zero_shot_labels(lang_run):
    rounds = _rounds(lang_run)
    assert [r["step"] for r in rounds] == [0, 2]
    assert all((lang_run / r["items"][0]["png"]).is_file() for r in rounds)


def test_previews_are_identical_on_rerun(semseg_run, tmp_path):
    again = train_tiny_run(tmp_path, "semseg")
    for rel in ("previews/step-0/synthetic_val_0000.png", "previews/step-2/synthetic_val_0000.png"):
        assert (again / rel).read_bytes() == (semseg_run / rel).read_bytes()


def test_data_preview_writes_colours_and_labels(tmp_path):
    recipe = tiny_profile(tmp_path)
    paths = recipe.family.preview_data(recipe, tmp_path / "data-preview")
    assert [p.name for p in paths] == ["synthetic_train_0000.png"]
    with Image.open(paths[0]) as image:
        assert image.mode == "RGB" and image.size[0] > 2 * 256
    # the labels column shows the synthetic classes' colours
    assert len(_colours(paths[0]) & {tuple(int(v) for v in c) for c in class_colors(6)}) >= 3
