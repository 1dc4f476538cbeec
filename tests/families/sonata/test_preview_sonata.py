"""Sonata previews (SceneSplat's pictures on the validation points) and its data preview."""

from __future__ import annotations

from PIL import Image
from tiny_sonata import tiny_recipe

from engine.train.events import read_events
from engine.train.trainer import train


def test_previews_and_data_preview(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"max_steps": 2}, previews={"items": 1})
    train(recipe, install_signal_handlers=False)
    run = tmp_path / "run"
    rounds = [e for e in read_events(run / "events.jsonl") if e["type"] == "preview"]
    assert [r["step"] for r in rounds] == [0, 2]
    for r in rounds:
        assert [i["name"] for i in r["items"]] == ["synthetic_val_0000"]
        with Image.open(run / r["items"][0]["png"]) as image:
            assert image.mode == "RGB" and image.width > 2 * 256
    paths = recipe.family.preview_data(recipe, tmp_path / "data")
    assert [p.name for p in paths] == ["synthetic_train_0000.png"] and paths[0].is_file()
