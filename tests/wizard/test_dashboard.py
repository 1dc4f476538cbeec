"""The dashboard on synthetic events.jsonl files: numbers on screen, LoRA rows, keys, failed runs."""

from __future__ import annotations

import asyncio

from tests.wizard.conftest import synthetic_events, write_events
from tests.wizard.test_screens import screen_text
from wizard.app import make_app
from wizard.run.state import RunState
from wizard.screens.dashboard import DashboardScreen, advice_for


def log_text(app) -> str:
    return "\n".join(app.screen.log_lines)


async def wait_for(pilot, predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await pilot.pause(0.1)


def test_dashboard_numbers_update_live(tmp_path):
    run_dir = tmp_path / "run"
    write_events(run_dir, synthetic_events(steps=10, total=20, dt=2.0))

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            assert isinstance(screen, DashboardScreen)
            await wait_for(pilot, lambda: screen.state.step == 10)
            screen.redraw()
            await pilot.pause()
            text = screen_text(app)
            assert "step 10/20" in text and "epoch 1/2" in text and "ETA 20s" in text
            assert "loss 1.1 " in text and "1.00 samples/s" in text and "512.0 MB RSS" in text
            assert "best miou 0.25 @ step 5" in text
            assert screen.query_one("#run-lora-table").row_count == 4
            assert "4 adapted modules" in text
            assert "warning: step 5: loss spike (test)" in log_text(app)
            more = synthetic_events(steps=20, total=20, dt=2.0, end="completed")[13:]  # steps 11..20 + end
            write_events(run_dir, more)
            await wait_for(pilot, lambda: screen.state.finished)
            await pilot.pause()
            text = screen_text(app)
            assert "completed" in text and "step 20/20" in text and "ETA 0s" in text
            assert "run completed at step 20" in log_text(app)
            await pilot.press("q")
        assert app.return_value == ("finished", run_dir, True)

    asyncio.run(go())


def test_dashboard_keys_write_control_files_and_detach(tmp_path):
    run_dir = tmp_path / "run"
    write_events(run_dir, synthetic_events(steps=2))

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.state.step == 2)
            await pilot.press("s")
            assert (run_dir / "SAVE").exists()
            await pilot.press("x")
            assert (run_dir / "STOP").exists()
            await pilot.press("q")  # refused: the run is still going
            await pilot.pause()
            assert app.is_running
            await pilot.press("2")
            assert app.screen.query_one("TabbedContent").active == "lora"
            await pilot.press("d")
        assert app.return_value == ("detached", run_dir, False)

    asyncio.run(go())


def test_dashboard_failed_run_shows_error_log_and_advice(tmp_path):
    run_dir = tmp_path / "run"
    write_events(run_dir, synthetic_events(steps=3, error="CUDA out of memory. Tried to allocate 2 GiB", end="failed"))
    (run_dir / "train.log").write_text("loading\n" + "".join(f"line {i}\n" for i in range(30)) + "Traceback: boom\n")

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.state.finished)
            await pilot.pause()
            log = log_text(app)
            assert "error: CUDA out of memory" in log
            assert "Traceback: boom" in log and "line 29" in log and "line 5\n" not in log
            assert "what to change: lower `train.batch_size`" in log
            assert app.screen.query_one("TabbedContent").active == "log"
            assert "run failed" in screen_text(app)

    asyncio.run(go())


def test_dashboard_process_gone_without_end(tmp_path):
    run_dir = tmp_path / "run"
    events = synthetic_events(steps=2)
    events[0]["pid"] = 2**22 + 12345  # no such process
    write_events(run_dir, events)

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: "is gone" in log_text(app))
            assert "read train.log" in log_text(app)

    asyncio.run(go())


def test_advice_matches_error_kind():
    state = RunState()
    state.apply([{"type": "error", "kind": "DataError", "message": "scene0: no coord.npy"}])
    assert "data-check" in advice_for(state, [])
    assert "train.lr" in advice_for(RunState(), ["loss is nan at step 3"])
