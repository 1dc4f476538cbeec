"""Pilot tests of the question screens at 80x24: navigation, inline validation, saving, never a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from tests.wizard.conftest import fake_hardware
from wizard.app import make_app
from wizard.screens import DataScreen, HardwareScreen, ModelScreen, PlanScreen, ReviewScreen


def run(coro):
    return asyncio.run(coro)


async def settle(pilot, timeout: float = 60.0) -> None:
    """Waits until no worker runs (cancelled ones included) and their messages are handled."""
    from textual.worker import WorkerState

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        await pilot.pause()
        if not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in pilot.app.workers):
            await pilot.pause()
            if not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in pilot.app.workers):
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("workers still running")


def screen_text(app) -> str:
    """Every Static/Label's content on the current screen as plain text, joined."""
    return "\n".join(widget_text(w) for w in app.screen.query("Static"))


def widget_text(widget) -> str:
    import io

    from rich.console import Console

    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(content)
    return console.file.getvalue()


def test_hardware_screen_shows_gpu_and_tier(gpu24):
    async def go():
        app = make_app(probe=gpu24)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert isinstance(app.screen, HardwareScreen)
            text = screen_text(app)
            assert "NVIDIA GeForce RTX 4090" in text and "24.0 GB" in text and "22.5 GB" in text
            assert "550.54.14" in text and "(24GB+)" in text and "rank 32, batch 8" in text
            assert "spconv: no" in text and "flash-attn: no" in text
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ModelScreen)

    run(go())


def test_hardware_screen_cpu_mode_probe_in_worker(cpu_only):
    calls = []

    def probe():
        calls.append(1)
        return cpu_only

    async def go():
        app = make_app(probe=probe)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert calls == [1]
            assert "no GPU: CPU mode (smoke tests and the demo)" in screen_text(app)
            assert app.draft.hardware is cpu_only

    run(go())


def test_model_screen_bad_checkpoint_path_shows_inline_problem(gpu24, tmp_path):
    async def go():
        app = make_app(probe=gpu24, start_screen="model")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("down", "enter")  # SceneSplat: focus moves to the checkpoint field
            assert app.draft.family == "scenesplat"
            assert app.screen.focused.id == "pretrained"
            await pilot.press(*"/nope/model.pth", "enter")
            await settle(pilot)
            assert isinstance(app.screen, ModelScreen)
            assert "/nope/model.pth: not found" in screen_text(app)
            garbage = tmp_path / "garbage.pth"
            garbage.write_bytes(b"not a checkpoint")
            app.screen.query_one("#pretrained").value = str(garbage)
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, ModelScreen)  # still here: the file does not load
            assert "✗" in screen_text(app)

    run(go())


def test_data_screen_missing_folder_then_builtin(gpu24):
    async def go():
        app = make_app(probe=gpu24, start_screen="data")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert "train │      8" in screen_text(app)  # the built-in rooms, counted
            await pilot.press(*"/no/such/data", "enter")
            await settle(pilot)
            assert isinstance(app.screen, DataScreen)
            assert "/no/such/data: folder not found" in screen_text(app)
            app.screen.query_one("#data-root").value = ""
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, PlanScreen)

    run(go())


def test_plan_screen_inline_messages_never_crash(gpu24):
    async def go():
        app = make_app(probe=gpu24, start_screen="plan", family="scenesplat")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = app.screen
            assert screen.query_one("#rank").value == "32" and screen.query_one("#batch_size").value == "8"
            screen.query_one("#rank").value = "abc"
            await settle(pilot)
            assert screen.errors["rank"].startswith("`lora.r` must be a whole number, got 'abc'")
            assert screen.query_one("#rank-error").display
            screen.query_one("#rank").value = "0"
            await settle(pilot)
            assert "rank" in screen.errors and "`lora.r`" in screen.errors["rank"]
            assert "greater than or equal to 1" in screen.errors["rank"]
            screen.query_one("#lr").value = "2.5"  # above the schema's 1.0
            await settle(pilot)
            assert "`train.lr`" in screen.errors["lr"]
            await pilot.press("ctrl+n")  # Next is refused while values are marked
            await pilot.pause()
            assert isinstance(app.screen, PlanScreen)
            screen.query_one("#rank").value = "16"
            screen.query_one("#lr").value = "2e-4"
            await settle(pilot)
            assert screen.errors == {}
            assert app.draft.plan.rank == 16 and app.draft.plan.lr == 2e-4
            assert not screen.query_one("#rank-error").display
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert isinstance(app.screen, ReviewScreen)
            assert "r: 16" in screen_text(app)

    run(go())


def test_plan_screen_lora_table_and_gpu_count():
    async def go():
        app = make_app(probe=fake_hardware(gpus=2), start_screen="plan", family="scenesplat", demo=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            table = app.screen.query_one("#lora-table")
            assert table.row_count == 20  # the demo PTv3: attn + mlp LoRA on every block
            caption = widget_text(app.screen.query_one("#lora-caption"))
            assert "20 modules" in caption and "%" in caption
            assert app.screen.query("#num_gpus")
            app.screen.query_one("#num_gpus").value = 2
            await settle(pilot)
            assert app.draft.plan.num_gpus == 2
            assert app.draft.validate().launch.num_processes == 2
            assert "lora3d train PROFILE --launch" in screen_text(app)

    run(go())


def test_plan_screen_task_and_preset_come_from_the_family(gpu24):
    async def go():
        app = make_app(probe=gpu24, start_screen="plan", family="scenesplat")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = app.screen
            task = screen.query_one("#task")
            assert task.value == "semseg"  # the family's default task first, then its others
            assert not screen.query_one("#preset-note").display
            screen.query_one("#preset").value = "standard"
            await settle(pilot)
            assert app.draft.plan.preset == "standard"
            assert "standard: rank 8, attention of every encoder stage" in screen_text(app)
            screen.query_one("#task").value = "lang"
            await settle(pilot)
            assert app.draft.profile_dict()["model"]["task"] == "lang"
            assert "`model.task`" not in " ".join(screen.errors.values())

    run(go())


def test_review_saves_and_asks_before_overwrite(gpu24, tmp_path):
    async def go():
        app = make_app(probe=gpu24, start_screen="review", profiles_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            field = app.screen.query_one("#save-path")
            assert Path(field.value) == tmp_path / "wizard-demo.yaml"
            assert "headless: lora3d train" in screen_text(app)
            existing = tmp_path / "taken.yaml"
            existing.write_text("keep me\n")
            field.value = str(existing)
            app.screen.query_one("#save").press()  # not a click: a toast may cover the button
            await pilot.pause()
            assert type(app.screen).__name__ == "ConfirmDialog"
            await pilot.press("enter")  # the focused answer is "Keep it"
            await pilot.pause()
            assert existing.read_text() == "keep me\n"
            assert "exists and was kept" in screen_text(app)
            field.value = str(tmp_path / "mine.txt")
            app.screen.query_one("#save").press()  # not a click: a toast may cover the button
            await pilot.pause()
            assert "must be a .yaml file" in screen_text(app)
            field.value = str(tmp_path / "new.yaml")
            app.screen.query_one("#save").press()  # not a click: a toast may cover the button
            for _ in range(50):  # the save runs off the UI thread; on a loaded machine it takes a few frames
                await pilot.pause(0.05)
                if app.return_value is not None:
                    break
        assert app.return_value == ("saved", tmp_path / "new.yaml")
        text = (tmp_path / "new.yaml").read_text()
        assert text.startswith("# Written by the lora3d wizard")
        data = yaml.safe_load(text)
        assert data["model"]["family"] == "scenesplat" and data["hardware"]["gpu_total_gb"] == 24.0

    run(go())


def test_escape_goes_back(gpu24):
    async def go():
        app = make_app(probe=gpu24)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ModelScreen)
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, HardwareScreen)

    run(go())


def test_a_plugin_family_is_in_the_model_list_and_walks_to_a_saved_profile(gpu24, tmp_path):
    """The toy family (tests/toy_family.py, loaded through LORA3D_PLUGINS) declares a WizardSpec and nothing else."""
    from textual.widgets import OptionList

    from tests.toy_family import ToyFamily

    async def go():
        app = make_app(probe=gpu24, start_screen="model", profiles_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            options = app.screen.query_one("#family", OptionList)
            listed = [options.get_option_at_index(i) for i in range(options.option_count)]
            assert [str(o.prompt) for o in listed if o.id == "toy"] == [ToyFamily.label]
            assert "demo-toy" not in [o.id for o in listed]  # it ships no demo profile
            options.highlighted = [o.id for o in listed].index("toy")
            await settle(pilot)
            assert (app.draft.family, app.draft.demo, app.draft.name) == ("toy", False, "toy-lora")
            assert ToyFamily.wizard.description in screen_text(app)
            assert app.screen.query_one("#pretrained").display
            await pilot.press("enter", "enter")  # choose it, then an empty checkpoint: a random base
            await settle(pilot)
            assert isinstance(app.screen, DataScreen)
            assert "the toy family has no data check" in screen_text(app)
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, PlanScreen)
            assert "LoRA: 2 modules" in screen_text(app)  # blocks.0.proj and blocks.1.proj
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert isinstance(app.screen, ReviewScreen)
            app.screen.query_one("#save").press()
            for _ in range(50):
                await pilot.pause(0.05)
                if app.return_value is not None:
                    break
        assert app.return_value == ("saved", tmp_path / "toy-lora.yaml")
        text = (tmp_path / "toy-lora.yaml").read_text()
        assert text.startswith("# Written by the lora3d wizard (Toy).")
        data = yaml.safe_load(text)
        assert data["model"]["family"] == "toy" and data["train"]["max_steps"] == 8 and data["train"]["device"] == "cpu"

    run(go())
