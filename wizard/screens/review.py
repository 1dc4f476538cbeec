"""Provides the Review screen: the profile as YAML, the equivalent command, and saving it (asks before overwriting)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, Static

from engine.errors import Lora3dError
from engine.profile import dump_profile, save_profile
from wizard.dialogs.confirm import ConfirmDialog
from wizard.draft import free_run_dir, suggest_profile_path
from wizard.fields import FIELDS, parse_field
from wizard.messages import StartRun
from wizard.screens.base import WizardScreen
from wizard.widgets.profile_preview import ProfilePreview


class ReviewScreen(WizardScreen):
    step_name = "review"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "review and save", classes="step-title")
        with VerticalScroll(classes="body", id="review-body"):
            yield Static("", id="command", classes="result")
            yield ProfilePreview("", id="yaml")
        with Horizontal(classes="field-row", id="save-row"):
            yield Label(FIELDS["save_path"].label, classes="field-label")
            yield Input(id="save-path", compact=True)
        yield Static("", id="save-error", classes="field-error")
        with Horizontal(classes="nav"):
            yield Button("Save & train", id="train", variant="primary", compact=True)
            yield Button("Save only", id="save", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        path = suggest_profile_path(self.draft.name, self.wizard.profiles_dir)
        field = self.query_one("#save-path", Input)
        field.value = self._display(path)
        self._refresh()
        field.focus()

    def _display(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def _refresh(self) -> None:
        try:
            profile = self.draft.validate()
        except Lora3dError as exc:
            self.query_one("#yaml", ProfilePreview).update(Text(str(exc), style="red"))
            return
        path = self.query_one("#save-path", Input).value.strip() or "PROFILE.yaml"
        command = Text.assemble(("headless: ", "bold"), self.draft.train_command(path))
        command.append(f"\nrun directory: {free_run_dir(Path(profile.output.dir))}", style="dim")
        self.query_one("#command", Static).update(command)
        self.query_one("#yaml", ProfilePreview).show(dump_profile(profile))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#save-error", Static).update("")
        self._refresh()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.save(then_train=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.save(then_train=event.button.id == "train")

    def done(self) -> None:
        self.save(then_train=True)

    def save(self, then_train: bool) -> None:
        text = self.query_one("#save-path", Input).value.strip()
        error = self.query_one("#save-error", Static)
        path, message = parse_field("save_path", text)
        if message:
            error.update(Text(message, style="red"))
            return
        if path.exists():
            def answered(overwrite: bool | None) -> None:
                if overwrite:
                    self._write(path, then_train)
                else:
                    error.update(Text(f"{text} exists and was kept; type another name", style="yellow"))

            self.app.push_screen(ConfirmDialog(f"{text} already exists. Overwrite it?", yes="Overwrite",
                                               no="Keep it"), answered)
            return
        self._write(path, then_train)

    def _write(self, path: Path, then_train: bool) -> None:
        error = self.query_one("#save-error", Static)
        try:
            profile = self.draft.validate()
            save_profile(profile, path, header=self.draft.profile_header(self._display(path)))
        except (Lora3dError, OSError) as exc:
            error.update(Text(str(exc), style="red"))
            return
        self.wizard.saved_profile = path
        if then_train:
            self.post_message(StartRun(path))
        else:
            self.app.exit(("saved", path))
