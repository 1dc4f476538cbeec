"""Previews in the run state, `lora3d watch` (plain and TUI), the dashboard's Previews tab and the data screen.

The run directories are fake: synthetic events with `preview` events, and PNGs drawn with PIL whose colours
say which picture is shown (step and item), so a test can check the picture on screen, not only its caption.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.cli import main as cli_main
from engine.train.run_state import Preview, PreviewItem, RunState, event_line
from engine.train.watch import watch_plain
from tests.wizard.conftest import synthetic_events, write_events
from tests.wizard.test_dashboard import wait_for
from tests.wizard.test_screens import screen_text, settle
from wizard.app import make_app
from wizard.widgets.preview import PreviewBrowser, PreviewPicture, choose_renderer, fit_cells

ITEMS = ("scene0", "scene1")


@pytest.fixture(autouse=True)
def halfblocks(monkeypatch):
    """Pictures drawn with half-blocks whatever terminal runs the tests (pytest -s in a sixel terminal)."""
    monkeypatch.setenv("LORA3D_IMAGES", "halfblocks")


def colour(step: int, item: int) -> tuple[int, int, int]:
    """A colour per picture: red grows with the step, green tells the item."""
    return (min(255, 40 + 20 * step), 60 + 120 * item, 200)


def write_png(path: Path, step: int, item: int, size: tuple[int, int] = (120, 60)) -> None:
    """Two panels, like the real previews: the left one grey ("ground truth"), the right one the picture's colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste(colour(step, item), (size[0] // 2, 0, size[0], size[1]))
    image.save(path)


def preview_event(step: int, time: float, skipped: tuple[str, ...] = (), glb: bool = False) -> dict[str, Any]:
    items = [{"name": name, "png": f"previews/step-{step}/{name}.png",
              "glb": f"previews/step-{step}/{name}.glb" if glb else None}
             for name in ITEMS if name not in skipped]
    return {"type": "preview", "time": time, "step": step, "items": items, "seconds": 1.5, "skipped": list(skipped)}


def previews_run(run_dir: Path, end: str | None = "completed", pngs: bool = True) -> Path:
    """A 10-step run with previews at step 0 and after the eval at step 5 (the second item skipped there)."""
    events = []
    for event in synthetic_events(steps=10, total=10, dt=2.0, end=end):
        events.append(event)
        if event["type"] == "start":
            events.append(preview_event(0, event["time"]))
        elif event["type"] == "eval":
            events.append(preview_event(5, event["time"], skipped=("scene1",)))
            events.append({"type": "warning", "time": event["time"], "step": 5,
                           "message": "previews: the 30s budget ran out; skipped scene1"})
    write_events(run_dir, events)
    if pngs:
        for step, names in ((0, ITEMS), (5, ITEMS[:1])):
            for name in names:
                write_png(run_dir / f"previews/step-{step}/{name}.png", step, ITEMS.index(name))
    return run_dir


# ---------------------------------------------------------------------- run state and lines
def test_run_state_folds_preview_events_and_drops_bad_items():
    state = RunState()
    bad_items = [{"name": "a", "png": "previews/step-3/a.png"}, {"name": 3, "png": "x.png"}, {"name": "b"},
                 "not an object", {"name": "c", "png": "previews/step-3/c.png", "glb": 7}]
    state.apply([preview_event(0, 1.0, glb=True),
                 {"type": "preview", "step": 3, "items": bad_items, "seconds": "slow", "skipped": ["d", 4]},
                 {"type": "preview", "step": "three", "items": bad_items},  # no valid step: not a preview
                 preview_event(3, 2.0)])  # a repeated step (a resumed run): the later round replaces it
    assert [p.step for p in state.previews] == [0, 3]
    assert state.previews[0].items[0] == PreviewItem("scene0", "previews/step-0/scene0.png",
                                                     "previews/step-0/scene0.glb")
    assert state.previews[1] == Preview(3, (PreviewItem("scene0", "previews/step-3/scene0.png"),
                                            PreviewItem("scene1", "previews/step-3/scene1.png")), 1.5, ())
    partial = RunState()
    partial.apply([{"type": "preview", "step": 3, "items": bad_items, "seconds": "slow", "skipped": ["d", 4]}])
    (only,) = partial.previews
    assert only.items == (PreviewItem("a", "previews/step-3/a.png"), PreviewItem("c", "previews/step-3/c.png"))
    assert only.seconds is None and only.skipped == ("d",)


def test_event_line_names_the_pngs_joined_to_the_run_dir():
    state = RunState()
    event = preview_event(5, 1.0, skipped=("scene1",), glb=True)
    state.apply([event])
    assert event_line(event, state) == ("preview step 5 (1.5s): previews/step-5/scene0.png (+ .glb); "
                                        "skipped for the time budget: scene1")
    line = event_line(event, state, Path("runs/demo"))
    assert line is not None and line.startswith(f"preview step 5 (1.5s): {Path('runs/demo/previews/step-5/scene0.png')}")


# ---------------------------------------------------------------------- lora3d watch --plain
def test_watch_plain_on_a_finished_run_prints_one_line_per_preview(tmp_path, capsys):
    run_dir = previews_run(tmp_path / "run")
    out = io.StringIO()
    state = watch_plain(run_dir, out, follow_run=False)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("preview")]
    assert lines == [
        f"preview step 0 (1.5s): {run_dir / 'previews/step-0/scene0.png'}, {run_dir / 'previews/step-0/scene1.png'}",
        f"preview step 5 (1.5s): {run_dir / 'previews/step-5/scene0.png'}; skipped for the time budget: scene1",
    ]
    assert len(state.previews) == 2
    assert "warning: previews: the 30s budget ran out; skipped scene1" in out.getvalue()
    # The command itself: a finished run, followed to its end event, exit 0.
    assert cli_main(["watch", "--plain", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"preview step 0 (1.5s): {run_dir / 'previews/step-0/scene0.png'}" in printed
    assert printed.rstrip().endswith("end: completed at step 10, adapter runs/fake/adapter")


# ---------------------------------------------------------------------- the picture widget
def test_fit_cells_keeps_the_aspect_ratio_in_half_blocks():
    assert fit_cells((120, 60), (80, 12), (1, 2)) == (48, 12)  # height-bound: 24 pixel rows in 12 cells
    assert fit_cells((120, 60), (30, 40), (1, 2)) == (30, 8)  # width-bound: 15 pixel rows -> 8 cells
    assert fit_cells((120, 60), (0, 10), (1, 2)) == (0, 0)
    assert fit_cells((10, 2000), (80, 10), (1, 2)) == (1, 10)  # never below one cell


def test_choose_renderer_follows_the_setting_and_says_when_it_cannot(monkeypatch):
    assert choose_renderer("sixel") == ("sixel", "")
    assert choose_renderer("kitty") == ("kitty", "")
    assert choose_renderer() == ("halfblocks", "")  # the autouse fixture's LORA3D_IMAGES
    monkeypatch.setenv("LORA3D_IMAGES", "ascii-art")
    name, note = choose_renderer()
    assert name == "halfblocks"  # auto: no terminal answered here, so half-blocks
    assert note == "LORA3D_IMAGES='ascii-art' is not one of auto, halfblocks, sixel, kitty: using auto"


def shown_colours(picture: PreviewPicture) -> set[tuple[int, int, int]]:
    """The colours of the half-block cells drawn for the picture on screen."""
    strip_colours = set()
    for y in range(picture.image_widget.size.height):
        for segment in picture.image_widget.render_line(y):
            style = segment.style
            if style is not None and segment.text.strip() and style.color is not None and style.color.triplet:
                strip_colours.add(tuple(style.color.triplet))
    return strip_colours


# ---------------------------------------------------------------------- the dashboard's Previews tab
def test_previews_tab_shows_the_newest_and_brackets_step_through(tmp_path):
    run_dir = previews_run(tmp_path / "run")

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.state.finished)
            screen.redraw()
            await pilot.press("5")
            await pilot.pause()
            browser = screen.query_one(PreviewBrowser)
            assert screen.query_one("TabbedContent").active == "previews"
            # The newest picture: step 5's scene0 (scene1 was skipped for the budget).
            assert browser.path == run_dir / "previews/step-5/scene0.png"
            text = screen_text(app)
            assert "step 5 · scene0 (1 of 1) · picture 3 of 3" in text and "(newest)" in text
            assert "skipped for time: scene1" in text
            width, height = browser.image_widget.size
            assert width == 4 * height and 0 < width <= 80  # a 2:1 picture in cells of 1x2 pixels
            assert colour(5, 0) in shown_colours(browser) and colour(0, 1) not in shown_colours(browser)
            await pilot.press("left_square_bracket")
            await pilot.pause()
            assert browser.path == run_dir / "previews/step-0/scene1.png"
            assert colour(0, 1) in shown_colours(browser)
            assert "step 0 · scene1 (2 of 2) · picture 2 of 3" in screen_text(app)
            await pilot.press("left_square_bracket", "left_square_bracket")  # stops at the first
            await pilot.pause()
            assert browser.path == run_dir / "previews/step-0/scene0.png"
            await pilot.press("right_square_bracket", "right_square_bracket")
            await pilot.pause()
            assert browser.path == run_dir / "previews/step-5/scene0.png" and browser.index is None

    asyncio.run(go())


def test_previews_tab_follows_new_previews_unless_stepped_back(tmp_path):
    run_dir = previews_run(tmp_path / "run", end=None)

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: len(screen.state.previews) == 2)
            screen.redraw()
            await pilot.press("left_square_bracket")  # opens the tab, one picture back: step 0's scene1
            await pilot.pause()
            browser = screen.query_one(PreviewBrowser)
            assert browser.path == run_dir / "previews/step-0/scene1.png"
            write_png(run_dir / "previews/step-8/scene0.png", 8, 0)
            write_events(run_dir, [{**preview_event(8, 1e6 + 20), "items": preview_event(8, 0)["items"][:1]}])
            await wait_for(pilot, lambda: len(screen.state.previews) == 3)
            screen.redraw()
            await pilot.pause()
            assert browser.path == run_dir / "previews/step-0/scene1.png"  # the user's choice stays
            await pilot.press("right_square_bracket", "right_square_bracket")
            await pilot.pause()
            assert browser.path == run_dir / "previews/step-8/scene0.png" and browser.index is None

    asyncio.run(go())


def test_previews_tab_without_previews_and_with_a_missing_png(tmp_path):
    plain = tmp_path / "plain"
    write_events(plain, synthetic_events(steps=3, total=3, end="completed"))
    missing = previews_run(tmp_path / "missing", pngs=False)

    async def go():
        app = make_app(run_dir=plain)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.state.finished)
            app.screen.redraw()
            await pilot.press("5")
            await pilot.pause()
            assert "this run wrote no previews" in screen_text(app)
        app = make_app(run_dir=missing)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.state.finished)
            app.screen.redraw()
            await pilot.press("5")
            await pilot.pause()
            browser = app.screen.query_one(PreviewBrowser)
            assert browser.path is None and browser.picture is None
            assert f"{missing / 'previews/step-5/scene0.png'}: cannot be read" in screen_text(app)

    asyncio.run(go())


# ---------------------------------------------------------------------- the data screen
def test_data_screen_draws_one_training_item_of_the_toy_family(gpu24, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))

    async def go():
        app = make_app(probe=gpu24, start_screen="data", family="toy")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            pictures = list(app.screen.query(PreviewPicture))
            assert len(pictures) == 1
            path = pictures[0].path
            assert path is not None and path.name == "item-0.png" and path.is_file()
            assert path.is_relative_to(tmp_path / "cache" / "data-preview")
            text = screen_text(app)
            assert "one training item, as read: 1 picture(s) in" in text and "item-0.png" in text
            assert pictures[0].image_widget.size.height > 0
            drawn = shown_colours(pictures[0])  # scaled down: the bars' colours blend with the white around them
            assert any(b > 180 and r < 100 for r, _, b in drawn)  # the toy's positive bars (40, 90, 220)
            assert any(r > 180 and b < 100 for r, _, b in drawn)  # its negative bars (220, 60, 40)

    asyncio.run(go())


def test_data_screen_says_when_the_family_draws_no_preview(gpu24, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tests.toy_family.ToyFamily.preview_data", lambda self, recipe, folder: [])

    async def go():
        app = make_app(probe=gpu24, start_screen="data", family="toy")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert not list(app.screen.query(PreviewPicture))
            assert "the toy family draws no data preview" in screen_text(app)

    asyncio.run(go())


def test_data_screen_shows_a_failed_preview_and_still_goes_on(gpu24, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))

    def broken(self, recipe, folder):
        raise RuntimeError("no font")

    monkeypatch.setattr("tests.toy_family.ToyFamily.preview_data", broken)

    async def go():
        app = make_app(probe=gpu24, start_screen="data", family="toy")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert "✗ data preview failed: RuntimeError: no font" in screen_text(app)
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert type(app.screen).__name__ == "PlanScreen"

    asyncio.run(go())
