"""Snapshots of the main screens at 80x24 and 120x40 (fake 24 GB GPU, synthetic data and events).

Update with `pytest tests/wizard/test_snapshots.py --snapshot-update` only after looking at the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.wizard.conftest import fake_hardware, synthetic_events, write_events
from tests.wizard.test_dashboard import wait_for
from tests.wizard.test_previews import previews_run
from tests.wizard.test_screens import settle
from wizard.app import make_app
from wizard.checks import CheckResult

SIZES = [(80, 24), (120, 40)]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths on screen: the same text on every machine
    # The planner's numbers belong to engine.memory (and its tests); pin them so the looks stay fixed.
    fixed = CheckResult(True, ["estimated peak: 1.2 GB of 24.0 GB - fits", "  weights: 1.3 MB",
                               "  activations: 0.9 GB"], data={"fits": True, "reasons": ["fits as is"]})
    monkeypatch.setattr("wizard.screens.plan.plan_memory", lambda draft: fixed)
    # The data preview is the family's drawing (tested with it elsewhere); here a fixed picture of one item.
    monkeypatch.setattr("wizard.screens.data.preview_data", lambda draft: fixed_data_preview(Path("preview")))
    monkeypatch.setenv("LORA3D_IMAGES", "halfblocks")  # the same cells whatever terminal runs the tests
    return tmp_path


def fixed_data_preview(folder: Path) -> CheckResult:
    """Two panels like a family's data preview: coloured points from above and from the side."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (160, 60), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i in range(24):
        x, y = (i * 37) % 70 + 5, (i * 23) % 50 + 5
        fill = [(220, 60, 40), (40, 160, 60), (40, 90, 220)][i % 3]
        draw.rectangle([x, y, x + 3, y + 3], fill=fill)
        draw.rectangle([x + 80, 50 - y // 2, x + 83, 53 - y // 2], fill=fill)
    path = folder / "item-0.png"
    image.save(path)
    return CheckResult(True, [f"one training item, as read: 1 picture(s) in {folder}"], data={"paths": [str(path)]})


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", ["hardware", "model", "data", "plan", "review"])
def test_question_screens(snap_compare, in_tmp, screen, size):
    app = make_app(probe=fake_hardware(1, 24.0), start_screen=screen, profiles_dir=Path("profiles"))

    async def ready(pilot):
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare, in_tmp, size):
    events = synthetic_events(steps=20, total=40, dt=2.0)
    for i, event in enumerate(events):
        if event["type"] == "step":  # a noisy falling curve, fixed numbers
            event["loss"] = round(2.0 * 0.95 ** event["step"] + 0.05 * ((i * 7) % 5), 4)
    write_events(Path("run"), events)
    app = make_app(run_dir=Path("run"))

    async def ready(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.state.step == 20)
        pilot.app.screen.redraw()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard_previews_tab(snap_compare, in_tmp, size):
    previews_run(Path("run"))
    app = make_app(run_dir=Path("run"))

    async def ready(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.state.finished)
        pilot.app.screen.redraw()
        await pilot.press("5", "left_square_bracket")  # step 0's second item: a full round of two
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=ready)
