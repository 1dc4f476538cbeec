"""The dashboard's follow-up commands after a run: evaluate and predict, found in the run family's entry.

A test plugin family (tests/wizard/eval_plugin.py) declares fake `eval` and `predict` commands; the toy
family declares none.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.families import registry
from tests.wizard.conftest import synthetic_events, write_events
from tests.wizard.test_dashboard import wait_for
from tests.wizard.test_screens import screen_text
from wizard.app import make_app
from wizard.dialogs.scene import SceneDialog
from wizard.run import actions


@pytest.fixture
def eval_plugin(monkeypatch):
    """Registers the plugin family for this test only (children load it through LORA3D_PLUGINS)."""
    plugins, instances = dict(registry._PLUGINS), dict(registry._INSTANCES)
    monkeypatch.setenv("LORA3D_PLUGINS", "tests.toy_family,tests.wizard.eval_plugin")
    from tests.wizard import eval_plugin

    registry.register_family(eval_plugin.EvalToyFamily)
    try:
        yield eval_plugin
    finally:
        registry._PLUGINS.clear()
        registry._PLUGINS.update(plugins)
        registry._INSTANCES.clear()
        registry._INSTANCES.update(instances)


def finished_run(run_dir: Path, family: str, end: str | None = "completed") -> Path:
    events = synthetic_events(steps=2, total=2, end=end)
    events[0]["family"] = family
    write_events(run_dir, events)
    return run_dir


def results(screen) -> str:
    return "\n".join(screen.result_lines)


def test_actions_come_from_the_family_entry(eval_plugin, tmp_path):
    found = actions.run_actions("toyeval")
    assert [(a.name, a.label, a.help) for a in found] == [
        ("eval", "evaluate", "evaluate a run's adapter (fake)"),
        ("predict", "predict on a scene", "label a scene folder with scene.txt (fake)")]
    assert actions.run_actions("toy") == [] and actions.run_actions(None) == []
    assert found[1].command_line(Path("runs/x"), Path("s"), Path("o")) == "lora3d predict runs/x --scene s --out o"
    # the family is read from the start event, else from the resolved profile
    assert actions.run_family(tmp_path, {"family": "toyeval"}) == "toyeval"
    (tmp_path / "profile.resolved.yaml").write_text("model:\n  family: toy\n")
    assert actions.run_family(tmp_path, {}) == "toy"


def test_family_command_errors_exit_2_with_the_message(eval_plugin, tmp_path, capsys):
    assert actions.main(["toyeval", "eval", str(tmp_path / "run")]) == 0
    assert "fake eval of run: val_loss 0.125" in capsys.readouterr().out
    code = actions.main(["toyeval", "predict", str(tmp_path), "--scene", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and f"error: {tmp_path}: has no scene.txt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert actions.main(["toy", "eval", str(tmp_path)]) == 2
    assert "the toy family has no `eval` command" in capsys.readouterr().err


def test_finished_run_offers_evaluate(eval_plugin, tmp_path):
    run_dir = finished_run(tmp_path / "run", "toyeval")

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.state.finished)
            await pilot.pause()
            assert screen.check_action("evaluate", ()) is True and screen.check_action("predict", ()) is True
            assert "next: e evaluate, p predict on a scene" in "\n".join(screen.log_lines)
            await pilot.press("e")
            await wait_for(pilot, lambda: "evaluate: done" in results(screen), timeout=120)
            assert screen.query_one("TabbedContent").active == "results"
            assert f"$ lora3d eval {run_dir}" in results(screen)
            assert "fake eval of run: val_loss 0.125 on 8 samples" in results(screen)
            # the predict dialog checks the scene path before anything starts; Escape cancels
            await pilot.press("p")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, SceneDialog)
            assert dialog.query_one("#out").value == str(run_dir / "predictions")
            dialog.query_one("#scene").value = str(tmp_path / "nowhere")
            dialog.query_one("#predict").press()
            await pilot.pause()
            assert f"{tmp_path / 'nowhere'}: not found" in screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is screen and screen.follow_up_process.args[3:5] == ["toyeval", "eval"]  # predict never started

    asyncio.run(go())


@pytest.mark.slow  # two child processes, each importing torch: about 20 s on 2 busy cores
def test_predict_on_a_scene_runs_the_family_command(eval_plugin, tmp_path):
    run_dir = finished_run(tmp_path / "run", "toyeval")
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "scene.txt").write_text("chair table\n")

    async def go():
        app = make_app(run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.state.finished)
            for runs, (target, out) in enumerate(((tmp_path, tmp_path / "bad"), (scene, tmp_path / "labels")), 1):
                await pilot.press("p")
                await pilot.pause()
                app.screen.query_one("#scene").value = str(target)
                app.screen.query_one("#out").value = str(out)
                app.screen.query_one("#predict").press()
                await wait_for(pilot, lambda n=runs: sum(line.startswith("predict on a scene: ")
                                                         for line in screen.result_lines) == n, timeout=120)
            text = results(screen)
            assert f"error: {tmp_path}: has no scene.txt" in text
            assert "predict on a scene: failed (exit 2)" in text
            assert f"wrote {tmp_path / 'labels' / 'labels.txt'}" in text and text.endswith("predict on a scene: done")
        assert (tmp_path / "labels" / "labels.txt").read_text() == "CHAIR TABLE\n"
        assert not (tmp_path / "bad").exists()

    asyncio.run(go())


def test_actions_hidden_while_running_and_for_families_without_them(eval_plugin, tmp_path):
    running = finished_run(tmp_path / "running", "toyeval", end=None)
    plain = finished_run(tmp_path / "plain", "toy")

    async def go():
        app = make_app(run_dir=running)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.state.step == 2)
            assert [a.name for a in app.screen.actions] == ["eval", "predict"]
            assert app.screen.check_action("evaluate", ()) is False  # no adapter until the end event
            await pilot.press("e")
            await pilot.pause()
            assert not any(line.startswith("$ ") for line in app.screen.result_lines)
        app = make_app(run_dir=plain)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: app.screen.state.finished)
            await pilot.pause()
            assert app.screen.actions == []
            assert app.screen.check_action("predict", ()) is False
            assert "the toy family offers no evaluate or predict command" in results(screen)
            await pilot.press("p")
            await pilot.pause()
            assert not isinstance(app.screen, SceneDialog)

    asyncio.run(go())
