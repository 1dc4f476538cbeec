"""Preview rounds on a toy family that draws pictures: steps, files, events, seeds, the budget, TensorBoard, resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from engine.families.base import PreviewFiles, PreviewItem, Recipe, first_preview_items
from engine.families.recipe import resolve_recipe
from engine.families.registry import register_family
from engine.memory.probe import probe_profile
from engine.render import write_png
from engine.train.event_types import EvalEvent, PreviewEvent, parse_event
from engine.train.events import read_events
from engine.train.memory_probe import run_probe
from engine.train.trainer import Trainer, train
from tests.conftest import toy_profile_dict
from tests.toy_family import ToyFamily


@register_family
class PreviewToyFamily(ToyFamily):
    """The toy family with previews: each item's prediction plus seeded noise, drawn as a 16 x 16 image."""

    name = "toy-preview"
    wizard = None  # registered at import: kept out of the wizard's model list (snapshots)
    slow: ClassVar[dict[str, float]] = {}
    """Test seam: seconds an item's preview sleeps."""
    broken: ClassVar[set[str]] = set()
    """Test seam: items whose preview raises."""

    def preview_items(self, recipe: Recipe, train_ds: Any, val_ds: Any) -> list[PreviewItem]:
        return first_preview_items(train_ds, val_ds, recipe.profile.previews.items, lambda ds, i: f"sample-{i}")

    def preview(self, recipe: Recipe, model: torch.nn.Module, item: PreviewItem, folder: Path, seed: int,
                step: int) -> PreviewFiles:
        time.sleep(self.slow.get(item.name, 0.0))
        if item.name in self.broken:
            raise RuntimeError("injected failure")
        assert not model.training and not torch.is_grad_enabled()
        x = item.dataset[item.index]["x"][None]
        value = float(model(x).reshape(-1)[0])
        noise = torch.rand(16, 16, generator=torch.Generator().manual_seed(seed + item.index)).numpy()
        pixels = np.clip((np.tanh(value) + 1) * 100 + noise * 50, 0, 255).astype(np.uint8)
        path = write_png(Image.fromarray(np.repeat(pixels[..., None], 3, axis=2)), folder / f"{item.name}.png")
        return PreviewFiles(path)


@pytest.fixture(autouse=True)
def _no_seams():
    yield
    PreviewToyFamily.slow.clear()
    PreviewToyFamily.broken.clear()


def _recipe(tmp_path: Path, name: str = "run", previews: dict | None = None, **sections: Any) -> Recipe:
    data = toy_profile_dict(tmp_path, **sections)
    data["model"]["family"] = "toy-preview"
    data["train"]["eval_every"] = 3
    data["output"]["dir"] = str(tmp_path / name)
    data["previews"] = {"max_seconds": 60, **(previews or {})}
    return resolve_recipe(data)


def _previews(run: Path) -> list[dict]:
    return [e for e in read_events(run / "events.jsonl") if e["type"] == "preview"]


def test_previews_at_step_0_and_after_every_evaluation(tmp_path):
    train(_recipe(tmp_path))
    run = tmp_path / "run"
    events = read_events(run / "events.jsonl")
    rounds = _previews(run)
    assert [e["step"] for e in rounds] == [0, 3, 6]
    for event in rounds:
        assert [i["name"] for i in event["items"]] == ["sample-0", "sample-1"] and event["skipped"] == []
        assert event["seconds"] >= 0
        for item in event["items"]:
            assert item["png"] == f"previews/step-{event['step']}/{item['name']}.png" and item["glb"] is None
            with Image.open(run / item["png"]) as image:
                assert image.mode == "RGB" and image.size == (16, 16)
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step-0", "step-3", "step-6"]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6] and all(e["preview_seconds"] >= 0 for e in evals)
    notes = [e["message"] for e in events if e["type"] == "info"]
    assert any(n.startswith("previews: 2 fixed validation item(s) (sample-0, sample-1), seed 0") for n in notes)
    # the step-0 round comes before the first step: it shows the base model
    types = [e["type"] for e in events]
    assert types.index("preview") < types.index("step")


def test_previews_are_identical_on_rerun_and_do_not_change_training(tmp_path):
    a = train(_recipe(tmp_path, "a"))
    b = train(_recipe(tmp_path, "b"))
    off = train(_recipe(tmp_path, "off", previews={"enabled": False}))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "previews").rglob("*.png"))
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # the pictures follow training: the adapted model draws another image than the base
    first = np.asarray(Image.open(tmp_path / "a" / "previews/step-0/sample-0.png"))
    last = np.asarray(Image.open(tmp_path / "a" / "previews/step-6/sample-0.png"))
    assert not np.array_equal(first, last)
    # previews run on a forked RNG: the losses are those of a run without them
    assert a.losses == b.losses == off.losses
    assert not (tmp_path / "off" / "previews").exists() and _previews(tmp_path / "off") == []
    notes = [e["message"] for e in read_events(tmp_path / "off" / "events.jsonl") if e["type"] == "info"]
    assert "previews are off (`previews.enabled: false`)" in notes


def test_another_seed_draws_other_pictures(tmp_path):
    train(_recipe(tmp_path, "a", train={"max_steps": 3}))
    train(_recipe(tmp_path, "b", train={"max_steps": 3}, previews={"seed": 5}))
    rel = "previews/step-0/sample-0.png"
    assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "b" / rel).read_bytes()


def test_budget_skips_what_does_not_fit_with_a_warning(tmp_path):
    PreviewToyFamily.slow["sample-0"] = 0.3
    train(_recipe(tmp_path, previews={"max_seconds": 0.2, "items": 3}, train={"max_steps": 3}))
    run = tmp_path / "run"
    rounds = _previews(run)
    # step 0: the first item runs (nothing measured yet) and spends the budget; the rest are skipped
    assert [i["name"] for i in rounds[0]["items"]] == ["sample-0"]
    assert rounds[0]["skipped"] == ["sample-1", "sample-2"] and rounds[0]["seconds"] >= 0.3
    # step 3: sample-0 is known to take longer than the budget, so it is skipped; the cheap ones run
    assert rounds[1]["skipped"] == ["sample-0"] and [i["name"] for i in rounds[1]["items"]] == ["sample-1", "sample-2"]
    warnings = [e for e in read_events(run / "events.jsonl") if e["type"] == "warning"]
    assert [w["step"] for w in warnings] == [0, 3]
    assert "skipped sample-1, sample-2" in warnings[0]["message"]
    assert "`previews.max_seconds` = 0.2 s" in warnings[0]["message"]
    assert sorted(p.name for p in (run / "previews" / "step-0").iterdir()) == ["sample-0.png"]


def test_a_failing_preview_is_a_warning_and_training_goes_on(tmp_path):
    PreviewToyFamily.broken.add("sample-1")
    result = train(_recipe(tmp_path, train={"max_steps": 3}))
    assert result.status == "completed"
    run = tmp_path / "run"
    assert [[i["name"] for i in e["items"]] for e in _previews(run)] == [["sample-0"], ["sample-0"]]
    warnings = [e["message"] for e in read_events(run / "events.jsonl") if e["type"] == "warning"]
    assert warnings[0] == ("preview of sample-1 at step 0 failed (RuntimeError: injected failure); training goes on "
                           "without it")


def test_round_with_nothing_drawn_leaves_no_folder(tmp_path):
    PreviewToyFamily.broken.update({"sample-0", "sample-1"})
    train(_recipe(tmp_path, train={"max_steps": 3}))
    run = tmp_path / "run"
    assert [e["items"] for e in _previews(run)] == [[], []]
    assert not (run / "previews" / "step-0").exists()
    assert [p.name for p in (run / "previews").iterdir()] == []  # no temporary left behind


def test_previews_go_to_tensorboard_as_step_indexed_images(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(_recipe(tmp_path, output={"tensorboard": True}))
    files = list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))
    assert files
    steps: dict[str, list[int]] = {}
    for file in files:
        acc = event_accumulator.EventAccumulator(str(file), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            steps.setdefault(tag, []).extend(i.step for i in acc.Images(tag))
            assert all(i.width == 16 and i.height == 16 for i in acc.Images(tag))
    assert {tag: sorted(s) for tag, s in steps.items()} == {"preview/sample-0": [0, 3, 6], "preview/sample-1": [0, 3, 6]}


def test_resume_keeps_the_step_0_previews(tmp_path):
    recipe = _recipe(tmp_path)
    first = Trainer(recipe, install_signal_handlers=False).run(steps=4)
    assert first.status == "stopped"
    run = tmp_path / "run"
    step0 = (run / "previews" / "step-0" / "sample-0.png").stat().st_mtime_ns
    Trainer(recipe, resume=True, install_signal_handlers=False).run()
    assert [e["step"] for e in _previews(run)] == [0, 3, 6]  # step 0 once, step 3 once (before the stop), step 6
    assert (run / "previews" / "step-0" / "sample-0.png").stat().st_mtime_ns == step0


def test_resume_at_step_0_keeps_an_existing_step_0_round(tmp_path):
    recipe = _recipe(tmp_path)
    train(_recipe(tmp_path, "src", train={"max_steps": 3}))
    (tmp_path / "run" / "previews").mkdir(parents=True)
    (tmp_path / "src" / "previews" / "step-0").rename(tmp_path / "run" / "previews" / "step-0")
    Trainer(recipe, resume=True, install_signal_handlers=False).run()
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "preview"] == [3, 6]
    assert "previews of step 0 exist from an earlier start of this run; kept" in [e.get("message") for e in events]


def test_a_family_without_previews_says_so(tmp_path):
    data = toy_profile_dict(tmp_path)
    train(resolve_recipe(data))
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert "the toy family draws no previews; `previews` settings are unused" in [e.get("message") for e in events]
    assert not (tmp_path / "run" / "previews").exists()


def test_preview_events_parse_typed():
    raw = {"type": "preview", "time": 1.0, "step": 3, "seconds": 0.5, "skipped": ["b", 7],
           "items": [{"name": "a", "png": "previews/step-3/a.png", "glb": None}, {"name": 1}, "x"]}
    event = parse_event(raw)
    assert isinstance(event, PreviewEvent) and event.step == 3 and event.seconds == 0.5
    assert event.items == [{"name": "a", "png": "previews/step-3/a.png", "glb": None}]
    assert event.skipped == ["b"]
    assert parse_event({"type": "preview", "items": "nope"}).dropped == ("items",)
    assert parse_event({"type": "eval", "step": 3, "preview_seconds": 1.5}) == EvalEvent(
        type="eval", step=3, preview_seconds=1.5)


@pytest.mark.parametrize(("value", "message"), [
    ({"items": 0}, "previews.items"), ({"items": 5}, "previews.items"), ({"max_seconds": 0}, "previews.max_seconds"),
    ({"colour": True}, "previews.colour"),
])
def test_previews_section_is_checked(tmp_path, value, message):
    from engine.errors import ProfileError

    data = toy_profile_dict(tmp_path)
    data["previews"] = value
    with pytest.raises(ProfileError, match=message.replace(".", r"\.")):
        resolve_recipe(data)


def test_the_memory_probe_draws_no_previews(tmp_path):
    """The step-0 round samples before the probe's measured steps; on a CPU the heap it leaves resident hid the
    steps' peak (the MIDI calibration measured 5 MB for a 250 MB step)."""
    run = tmp_path / "probe"
    answer = run_probe({"profile": probe_profile(_recipe(tmp_path), "cpu", 2, run), "steps": 2})
    assert "error" not in answer, answer
    assert not (run / "previews").exists() and _previews(run) == []
