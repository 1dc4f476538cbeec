"""Enter through every screen on a CPU-only machine: the demo profile is saved and really trains (2 steps)."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from tests.wizard.test_dashboard import wait_for
from tests.wizard.test_screens import settle
from wizard.app import make_app
from wizard.screens import DashboardScreen, DataScreen, HardwareScreen, ModelScreen, PlanScreen, ReviewScreen

# The demo, shortened: a random base instead of the cached pretrained one (pretraining takes minutes),
# two steps over two small rooms.
QUICK = {"model.demo_base": False, "train.max_steps": 2, "data.synthetic_train": 2, "data.synthetic_val": 1,
         "data.synthetic_points": 300}


@pytest.mark.slow  # a real child training run: about 60 s on 2 busy cores
def test_enter_through_every_screen_runs_the_demo(tmp_path, monkeypatch, cpu_only):
    monkeypatch.chdir(tmp_path)
    profiles = tmp_path / "profiles"

    async def go():
        app = make_app(probe=cpu_only, profiles_dir=profiles, overrides=QUICK)
        async with app.run_test(size=(80, 24)) as pilot:
            for expected in (HardwareScreen, ModelScreen, DataScreen, PlanScreen, ReviewScreen):
                await settle(pilot)
                assert isinstance(app.screen, expected)
                await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=60)
            screen = app.screen
            await wait_for(pilot, lambda: screen.state.finished or screen._process_note is not None, timeout=240)
            await pilot.pause()
            assert screen.state.status == "completed", "\n".join(screen.log_lines)
            assert screen.state.step == 2 and len(screen.state.losses) == 2
            assert screen.state.eval_values, "the demo evaluates at the end"
            await pilot.press("q")
        run_dir = tmp_path / "runs" / "wizard-demo"
        assert app.return_value[0] == "finished" and app.return_value[1].resolve() == run_dir
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        saved = yaml.safe_load((profiles / "wizard-demo.yaml").read_text())
        assert saved["model"]["family"] == "scenesplat" and saved["train"]["max_steps"] == 2
        assert saved["hardware"]["cpu_mode"] is True

    asyncio.run(go())
