"""Provides the dialog that asks where the scene to predict on is and where the results go."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class SceneDialog(ModalScreen[tuple[Path, Path] | None]):
    """Asks for a scene path (it must exist) and an output folder; dismisses with both, or None on Escape.

    Args:
        help: the family's one line about its predict command.
        out: the suggested output folder.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, help: str, out: Path) -> None:
        super().__init__()
        self.help = help
        self.out = out

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="scene-dialog"):
            yield Static(Text(f"Predict on a scene: {self.help}"), id="question")
            yield Label("scene (file or folder)")
            yield Input(placeholder="path to the scene", id="scene", compact=True)
            yield Label("write results to")
            yield Input(str(self.out), id="out", compact=True)
            yield Static("", id="scene-error", classes="field-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Predict", id="predict", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#scene", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "scene" and not self.query_one("#out", Input).value.strip():
            self.query_one("#out", Input).focus()
            return
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "predict":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        scene_text = self.query_one("#scene", Input).value.strip()
        out_text = self.query_one("#out", Input).value.strip()
        problem = None
        if not scene_text:
            problem = "type the scene's path"
        elif not Path(scene_text).expanduser().exists():
            problem = f"{scene_text}: not found. Type an existing scene file or folder."
        elif not out_text:
            problem = "type the folder to write the results to"
        elif Path(out_text).expanduser().is_file():
            problem = f"{out_text} is a file. Type a folder for the results."
        if problem:
            error = self.query_one("#scene-error", Static)
            error.update(Text(problem, style="red"))
            error.display = True
            return
        self.dismiss((Path(scene_text).expanduser(), Path(out_text).expanduser()))
