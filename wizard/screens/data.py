"""Provides the Data screen: a dataset folder checked by the family's data check, or the built-in data.

Once the check passes, a worker asks the family to draw one training item (`Family.preview_data`) and the
screen shows the pictures, so a user sees the data was read right before training on it.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, Static

from wizard.checks import CheckResult, check_data, preview_data
from wizard.draft import ProfileDraft
from wizard.fields import FIELDS, field_text, parse_field, set_field, shown
from wizard.messages import CheckFinished
from wizard.screens.base import WizardScreen
from wizard.screens.model import result_text
from wizard.widgets.preview import PreviewPicture


class DataScreen(WizardScreen):
    step_name = "data"

    def __init__(self) -> None:
        super().__init__()
        self._checked: tuple[str, bool, str, str] | None = None
        self._result: CheckResult | None = None
        self._proceed = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "training data", classes="step-title")
        with VerticalScroll(classes="body"):
            yield Label(FIELDS["data_root"].question)
            yield Input(placeholder=FIELDS["data_root"].placeholder, id="data-root", compact=True)
            yield Label(FIELDS["extra"].question, id="extra-label")
            yield Input(placeholder=FIELDS["extra"].placeholder, id="extra", compact=True)
            yield Static("", id="data-result", classes="result")
            yield Static("", id="data-preview-result", classes="result")
            yield Vertical(id="data-preview")
        with Horizontal(classes="nav"):
            yield Button("Next", id="next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        field = self.query_one("#data-root", Input)
        field.value = field_text(self.draft, "data_root")
        extra = self.query_one("#extra", Input)
        extra.value = field_text(self.draft, "extra")
        for widget in (extra, self.query_one("#extra-label")):
            widget.display = shown("extra", self.draft)
        field.focus()
        self._start_check(proceed=False)

    def _key(self) -> tuple[str, bool, str, str]:
        return (self.draft.choice.family, self.draft.demo, self.query_one("#data-root", Input).value.strip(),
                self.query_one("#extra", Input).value.strip())

    def _start_check(self, proceed: bool) -> None:
        key = self._key()
        root, _ = parse_field("data_root", key[2])  # a missing folder is the data check's to report
        set_field(self.draft, "data_root", root)
        # Bad KEY=VALUE words are kept as typed: the data check reports them with the rest.
        set_field(self.draft, "extra", key[3].split())
        self._proceed = proceed
        self.query_one("#data-result", Static).update(result_text(None, "checking the data..."))
        self._show_preview(None, "")
        self.check(key, self.draft.snapshot())

    @work(thread=True, exclusive=True, group="data")
    def check(self, key: tuple[str, bool, str, str], draft: ProfileDraft) -> None:
        self.post_message(CheckFinished("data", key, check_data(draft)))

    @work(thread=True, exclusive=True, group="data-preview")
    def draw_preview(self, key: tuple[str, bool, str, str], draft: ProfileDraft) -> None:
        self.post_message(CheckFinished("data-preview", key, preview_data(draft)))

    def on_check_finished(self, message: CheckFinished) -> None:
        if message.key != self._key():
            return
        if message.kind == "data-preview":
            self._show_preview(message.result)
            return
        if message.kind != "data":
            return
        self._checked, self._result = message.key, message.result
        self.query_one("#data-result", Static).update(result_text(message.result))
        if self._proceed and message.result.ok:
            super().done()
        elif message.result.ok:
            self._show_preview(None, "drawing one training item...")
            self.draw_preview(message.key, self.draft.snapshot())
        self._proceed = False

    def _show_preview(self, result: CheckResult | None, pending: str = "") -> None:
        """The data preview's message and one picture per PNG (cleared while a new check runs)."""
        if result is None:
            text = Text(pending, style="dim italic")
        else:  # the data check above already said "ok": only the preview's own lines here
            rows = [Text(f"✗ {line}", style="red") for line in result.problems] + [Text(line) for line in result.lines]
            text = Text("\n").join(rows)
        self.query_one("#data-preview-result", Static).update(text)
        holder = self.query_one("#data-preview", Vertical)
        holder.remove_children()
        paths = [Path(p) for p in (result.data.get("paths") or [])] if result is not None else []
        if paths:
            holder.mount_all(PreviewPicture(path, Text(path.name, style="bold"), classes="data-picture")
                             for path in paths)

    def done(self) -> None:
        if self._checked == self._key() and self._result is not None:
            if self._result.ok or self._result.data:  # a scanned folder with problems: the user has seen them
                super().done()
            else:
                self.notify("the data folder cannot be used; fix the path or clear it", severity="error")
            return
        if self._proceed and self._checked != self._key():
            return  # a check of this value is already running
        self._start_check(proceed=True)
