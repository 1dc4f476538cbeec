"""Provides the common frame of the wizard's question screens: title, step counter, back and next."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Button, Input

from wizard.messages import StepDone

if TYPE_CHECKING:
    from wizard.app import WizardApp
    from wizard.draft import ProfileDraft

STEPS = ("hardware", "model", "data", "plan", "review")


class WizardScreen(Screen):
    """A question screen: reads `app.draft`, posts StepDone when answered."""

    BINDINGS = [Binding("escape", "back", "Back"), Binding("ctrl+n", "next", "Next")]
    step_name = ""

    @property
    def wizard(self) -> WizardApp:
        return self.app  # type: ignore[return-value]

    @property
    def draft(self) -> ProfileDraft:
        return self.wizard.draft

    @property
    def step_title(self) -> str:
        index = STEPS.index(self.step_name) + 1 if self.step_name in STEPS else 0
        return f"Step {index}/{len(STEPS)}: "

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_next(self) -> None:
        self.done()

    # Enter in a field and the Next button both answer the step.
    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.done()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            self.done()

    def done(self) -> None:
        self.post_message(StepDone())
