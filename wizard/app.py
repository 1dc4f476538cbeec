"""Provides the wizard app and `make_app()`: hardware -> model -> data -> plan -> review -> live dashboard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding

from engine.hardware import HardwareInfo
from wizard.choices import default_choice, find_choice
from wizard.draft import REPO_ROOT, ProfileDraft, free_run_dir
from wizard.messages import StartRun, StepDone
from wizard.screens import DashboardScreen, DataScreen, HardwareScreen, ModelScreen, PlanScreen, ReviewScreen

SCREENS_IN_ORDER = {
    "hardware": HardwareScreen,
    "model": ModelScreen,
    "data": DataScreen,
    "plan": PlanScreen,
    "review": ReviewScreen,
}


class WizardApp(App[Any]):
    """The guided set-up. Exits with `("saved", path)`, `("detached", run_dir, finished)`,
    `("finished", run_dir, True)` or None (quit)."""

    CSS_PATH = "wizard.tcss"
    TITLE = "lora3d"
    SUB_TITLE = "LoRA fine-tuning of 3D foundation models"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, probe: Callable[[], HardwareInfo] | HardwareInfo | None = None, run_dir: Path | None = None,
                 start_screen: str | None = None, profiles_dir: Path | None = None,
                 overrides: dict[str, Any] | None = None, family: str | None = None, demo: bool = False) -> None:
        super().__init__()
        self.draft = ProfileDraft(overrides=dict(overrides or {}))
        if isinstance(probe, HardwareInfo):
            self.draft.hardware = probe
            self._probe: Callable[[], HardwareInfo] | None = None
        else:
            self._probe = probe
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.start_screen = start_screen or ("dashboard" if run_dir is not None else "hardware")
        self.profiles_dir = Path(profiles_dir) if profiles_dir is not None else REPO_ROOT / "profiles"
        self.saved_profile: Path | None = None
        self._start_choice = (family, demo)
        """The preselected model (None: the model list's default); chosen once the families are read."""

    # ------------------------------------------------------------------ state (attributes go down)
    def probe(self) -> HardwareInfo:
        """The hardware probe (called from a worker thread)."""
        if self.draft.hardware is not None:
            return self.draft.hardware
        if self._probe is not None:
            return self._probe()
        from engine.hardware import probe_hardware  # lazy: imports torch; tests inject `probe`

        return probe_hardware()

    def set_hardware(self, hardware: HardwareInfo) -> None:
        self.draft.hardware = hardware
        if self.draft.family is None:
            self.choose_start_model()
        else:
            self.draft.plan = self.draft.recommended_plan()

    def choose_start_model(self) -> None:
        """Chooses the preselected model, or the list's default (reads the families: seconds the first time)."""
        family, demo = self._start_choice
        self.draft.choose(default_choice() if family is None else find_choice(family, demo))

    # ------------------------------------------------------------------ flow (messages come up)
    def on_mount(self) -> None:
        if self.start_screen == "dashboard":
            if self.run_dir is None:
                raise ValueError("start_screen='dashboard' needs run_dir")
            self.push_screen(DashboardScreen(self.run_dir))
            return
        if self.start_screen not in SCREENS_IN_ORDER:
            raise ValueError(f"unknown start_screen {self.start_screen!r}; use one of {list(SCREENS_IN_ORDER)}")
        if self.draft.hardware is None and self.start_screen != "hardware":
            self.set_hardware(self.probe())
        elif self.draft.family is None and self.draft.hardware is not None:
            self.choose_start_model()
        self.push_screen(SCREENS_IN_ORDER[self.start_screen]())

    def on_step_done(self, message: StepDone) -> None:
        names = list(SCREENS_IN_ORDER)
        current = next((n for n, cls in SCREENS_IN_ORDER.items() if isinstance(self.screen, cls)), None)
        if current is None:
            return
        index = names.index(current)
        if index + 1 < len(names):
            self.push_screen(SCREENS_IN_ORDER[names[index + 1]]())

    def on_start_run(self, message: StartRun) -> None:
        profile = self.draft.validate()
        run_dir = self.run_dir or free_run_dir(Path(profile.output.dir))
        self.run_dir = run_dir
        self.switch_to_dashboard(DashboardScreen(run_dir, profile_path=Path(message.profile_path),
                                                 launch=self.draft.plan.num_gpus > 1))

    def switch_to_dashboard(self, screen: DashboardScreen) -> None:
        # The questions are answered: drop them so Escape cannot go back into a running set-up.
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(screen)


def make_app(probe: Callable[[], HardwareInfo] | HardwareInfo | None = None, run_dir: Path | str | None = None,
             start_screen: str | None = None, profiles_dir: Path | str | None = None,
             overrides: dict[str, Any] | None = None, family: str | None = None, demo: bool = False) -> WizardApp:
    """The wizard app.

    Args:
        probe: a HardwareInfo (tests: a fake 24 GB GPU) or a callable returning one; default: the NVML probe.
        run_dir: with `start_screen=None` or `"dashboard"`, watch this run; with a wizard flow, train into it.
        start_screen: `hardware` (default), `model`, `data`, `plan`, `review` or `dashboard`.
        profiles_dir: where profiles are saved (default: the checkout's `profiles/`).
        overrides: dotted profile keys applied last (tests shorten the demo with `train.max_steps`).
        family: the preselected family (default: the model list's first demo).
        demo: with `family`, start from that family's demo profile.
    """
    return WizardApp(probe=probe, run_dir=Path(run_dir) if run_dir is not None else None,
                     start_screen=start_screen, profiles_dir=Path(profiles_dir) if profiles_dir else None,
                     overrides=overrides, family=family, demo=demo)
