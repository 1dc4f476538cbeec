"""Provides the Model screen: the families' model list, the base checkpoint (checked in a worker), the description.

The list, the descriptions and the checkpoint placeholder come from each family's `WizardSpec`
(`wizard.choices`); a demo line starts from the family's demo profile and keeps its own base.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from wizard.checks import CheckResult, check_checkpoint
from wizard.choices import choice_by_id, model_choices
from wizard.draft import ProfileDraft
from wizard.fields import FIELDS, field_text, parse_field, set_field
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
        self._checked: tuple[str, bool, str] | None = None
        self._result: CheckResult | None = None
        self._proceed = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "model family and base checkpoint", classes="step-title")
        with VerticalScroll(classes="body"):
            yield OptionList(*(Option(choice.label, id=choice.id) for choice in model_choices()), id="family")
            yield Label(FIELDS["pretrained"].question, id="pretrained-label")
            yield Input(id="pretrained", compact=True)
            yield Static("", id="pretrained-result", classes="result")
            yield Static("", id="architecture", classes="result")
        with Horizontal(classes="nav"):
            yield Button("Next", id="next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        family = self.query_one("#family", OptionList)
        ids = [choice.id for choice in model_choices()]
        family.highlighted = ids.index(self.draft.choice.id)
        self.query_one("#pretrained", Input).value = field_text(self.draft, "pretrained")
        self._show_family()
        family.focus()

    def _show_family(self) -> None:
        choice = self.draft.choice
        for widget_id in ("#pretrained", "#pretrained-label"):
            self.query_one(widget_id).display = not choice.demo
        self.query_one("#pretrained", Input).placeholder = choice.spec.pretrained_hint
        self.query_one("#architecture", Static).update(Text(choice.description(), style="dim"))
        self.query_one("#pretrained-result", Static).update("")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        choice = choice_by_id(event.option.id or "")
        if choice.id != self.draft.choice.id:
            self.draft.choose(choice)
            self.draft.pretrained = None
            self.query_one("#pretrained", Input).value = ""
            self._checked = None
            self._show_family()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if self.draft.demo:
            self.done()
        else:
            self.query_one("#pretrained", Input).focus()

    def _key(self) -> tuple[str, bool, str]:
        return (self.draft.choice.family, self.draft.demo, self.query_one("#pretrained", Input).value.strip())

    def done(self) -> None:
        key = self._key()
        value, _ = parse_field("pretrained", key[2])  # a missing path is the check's to report, with the rest
        set_field(self.draft, "pretrained", None if self.draft.demo else value)
        if self._checked == key and self._result is not None:
            if self._result.ok:
                super().done()
            else:
                self.notify("fix the checkpoint path, or clear it for a random base", severity="error")
            return
        self._proceed = True
        self.query_one("#pretrained-result", Static).update(result_text(None, "checking the checkpoint..."))
        self.check(key, self.draft.snapshot())

    @work(thread=True, exclusive=True, group="checkpoint")
    def check(self, key: tuple[str, bool, str], draft: ProfileDraft) -> None:
        self.post_message(CheckFinished("checkpoint", key, check_checkpoint(draft)))

    def on_check_finished(self, message: CheckFinished) -> None:
        if message.kind != "checkpoint" or message.key != self._key():
            return
        self._checked, self._result = message.key, message.result
        self.query_one("#pretrained-result", Static).update(result_text(message.result))
        if self._proceed and message.result.ok:
            self._proceed = False
            super().done()
        self._proceed = False
