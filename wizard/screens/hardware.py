"""Provides the Hardware screen: every GPU, host RAM, accelerators and the tier recommendation."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Header, Static

from wizard.choices import model_choices
from wizard.messages import HardwareProbed
from wizard.screens.base import WizardScreen
from wizard.widgets.gpu_table import GpuTable


class HardwareScreen(WizardScreen):
    step_name = "hardware"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "hardware", classes="step-title")
        with VerticalScroll(classes="body"):
            yield GpuTable("probing GPUs...", id="hardware")
        with Horizontal(classes="nav"):
            yield Button("Next", id="next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#next", Button).focus()
        if self.draft.hardware is not None:
            self.query_one(GpuTable).show(self.draft.hardware)
        else:
            self.probe()

    @work(thread=True, exclusive=True, group="probe")
    def probe(self) -> None:
        hardware = self.wizard.probe()
        model_choices()  # reads the families (seconds) here, so the model screen opens at once
        self.post_message(HardwareProbed(hardware))

    def on_hardware_probed(self, message: HardwareProbed) -> None:
        self.wizard.set_hardware(message.hardware)
        self.query_one(GpuTable).show(message.hardware)

    def done(self) -> None:
        if self.draft.hardware is None:
            self.notify("still probing the hardware...", severity="warning")
            return
        super().done()
