"""Provides the Model screen: family, base checkpoint (checked in a worker), architecture summary."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from wizard.checks import CheckResult, check_checkpoint
from wizard.draft import FAMILY_CHOICES
from wizard.messages import CheckFinished
from wizard.screens.base import WizardScreen


def result_text(result: CheckResult | None, pending: str = "checking...") -> Text:
    """A check result as styled lines: problems in red, details dim."""
    if result is None:
        return Text(pending, style="dim italic")
    text = Text()
    for line in result.problems:
        text.append(f"✗ {line}\n", style="red")
    if result.ok and not result.problems:
        text.append("✓ ok\n", style="green")
    for line in result.lines:
        text.append(line + "\n", style="dim" if not result.ok else "")
    text.rstrip()
    return text


class ModelScreen(WizardScreen):
    step_name = "model"

    def __init__(self) -> None:
        super().__init__()
        self._checked: tuple[str, str] | None = None
        self._result: CheckResult | None = None
        self._proceed = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "model family and base checkpoint", classes="step-title")
        with VerticalScroll(classes="body"):
            options = [Option(f"{label}", id=name) for name, label in FAMILY_CHOICES.items()]
            yield OptionList(*options, id="family")
            yield Label("Base checkpoint file or pipeline folder (empty: random base, smoke tests only)",
                        id="pretrained-label")
            yield Input(placeholder="e.g. ~/models/scenesplat/model_best.pth", id="pretrained", compact=True)
            yield Static("", id="pretrained-result", classes="result")
            yield Static("", id="architecture", classes="result")
        with Horizontal(classes="nav"):
            yield Button("Next", id="next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        family = self.query_one("#family", OptionList)
        family.highlighted = list(FAMILY_CHOICES).index(self.draft.family)
        if self.draft.pretrained is not None:
            self.query_one("#pretrained", Input).value = str(self.draft.pretrained)
        self._show_family()
        family.focus()

    def _show_family(self) -> None:
        demo = self.draft.family == "demo"
        for widget_id in ("#pretrained", "#pretrained-label"):
            self.query_one(widget_id).display = not demo
        arch = {
            "demo": "PT-v3m1 `demo-tiny` backbone + segmentation head (6 classes), pretrained on synthetic rooms A; "
                    "LoRA on attention and MLP, encoder and decoder",
            "scenesplat": "Point Transformer V3 (PT-v3m1) backbone, Pointcept/SceneSplat checkpoint layout; "
                          "task semseg (or lang); LoRA on attn.qkv/attn.proj",
            "midi": "MIDI-3D / TripoSG rectified-flow DiT (diffusers folder), CLIP + DINOv2 conditioning; "
                    "LoRA on to_q/to_k/to_v/to_out.0",
        }[self.draft.family]
        self.query_one("#architecture", Static).update(Text(arch, style="dim"))
        self.query_one("#pretrained-result", Static).update("")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        family = event.option.id or "demo"
        if family != self.draft.family:
            self.draft.set_family(family)
            self.draft.pretrained = None
            self.query_one("#pretrained", Input).value = ""
            self._checked = None
            self._show_family()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if self.draft.family == "demo":
            self.done()
        else:
            self.query_one("#pretrained", Input).focus()

    def _key(self) -> tuple[str, str]:
        return (self.draft.family, self.query_one("#pretrained", Input).value.strip())

    def done(self) -> None:
        key = self._key()
        text = key[1]
        self.draft.pretrained = Path(text).expanduser() if text and self.draft.family != "demo" else None
        if self._checked == key and self._result is not None:
            if self._result.ok:
                super().done()
            else:
                self.notify("fix the checkpoint path, or clear it for a random base", severity="error")
            return
        self._proceed = True
        self.query_one("#pretrained-result", Static).update(result_text(None, "checking the checkpoint..."))
        self.check(key)

    @work(thread=True, exclusive=True, group="checkpoint")
    def check(self, key: tuple[str, str]) -> None:
        self.post_message(CheckFinished("checkpoint", key, check_checkpoint(self.draft)))

    def on_check_finished(self, message: CheckFinished) -> None:
        if message.kind != "checkpoint" or message.key != self._key():
            return
        self._checked, self._result = message.key, message.result
        self.query_one("#pretrained-result", Static).update(result_text(message.result))
        if self._proceed and message.result.ok:
            self._proceed = False
            super().done()
        self._proceed = False
