"""Provides the Data screen: a dataset folder checked by the family's data check, or the built-in data."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, Static

from wizard.checks import CheckResult, check_data
from wizard.messages import CheckFinished
from wizard.screens.base import WizardScreen
from wizard.screens.model import result_text


class DataScreen(WizardScreen):
    step_name = "data"

    def __init__(self) -> None:
        super().__init__()
        self._checked: tuple[str, str, str] | None = None
        self._result: CheckResult | None = None
        self._proceed = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "training data", classes="step-title")
        with VerticalScroll(classes="body"):
            yield Label("Dataset folder (empty: the built-in synthetic data)")
            yield Input(placeholder="e.g. ~/data/scannetpp_3dgs", id="data-root", compact=True)
            yield Label("Extra settings, KEY=VALUE separated by spaces (as `lora3d train --set`)", id="extra-label")
            yield Input(placeholder="e.g. model.num_classes=20 data.label_key=segment20", id="extra", compact=True)
            yield Static("", id="data-result", classes="result")
        with Horizontal(classes="nav"):
            yield Button("Next", id="next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        field = self.query_one("#data-root", Input)
        if self.draft.data_root is not None:
            field.value = str(self.draft.data_root)
        extra = self.query_one("#extra", Input)
        extra.value = " ".join(self.draft.extra)
        for widget in (extra, self.query_one("#extra-label")):
            widget.display = self.draft.family != "demo"
        field.focus()
        self._start_check(proceed=False)

    def _key(self) -> tuple[str, str, str]:
        return (self.draft.family, self.query_one("#data-root", Input).value.strip(),
                self.query_one("#extra", Input).value.strip())

    def _start_check(self, proceed: bool) -> None:
        key = self._key()
        self.draft.data_root = Path(key[1]).expanduser() if key[1] else None
        self.draft.extra = key[2].split()
        self._proceed = proceed
        self.query_one("#data-result", Static).update(result_text(None, "checking the data..."))
        self.check(key)

    @work(thread=True, exclusive=True, group="data")
    def check(self, key: tuple[str, str, str]) -> None:
        self.post_message(CheckFinished("data", key, check_data(self.draft)))

    def on_check_finished(self, message: CheckFinished) -> None:
        if message.kind != "data" or message.key != self._key():
            return
        self._checked, self._result = message.key, message.result
        self.query_one("#data-result", Static).update(result_text(message.result))
        if self._proceed and message.result.ok:
            super().done()
        self._proceed = False

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
