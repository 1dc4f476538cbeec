"""Provides the Plan screen: the recommendation with its reasons, every value editable and re-checked.

Each edit is parsed on the spot (a non-number gets an inline message), then the whole profile is
re-validated in a worker; the engine's messages appear under the field they name.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.timer import Timer
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from engine.errors import Lora3dError
from wizard.checks import build_lora_table, plan_memory
from wizard.draft import ProfileDraft
from wizard.fields import (
    FIELDS,
    PLAN_FIELDS,
    draft_value,
    field_choices,
    field_text,
    parse_field,
    set_field,
    shown,
)
from wizard.messages import CheckFinished, ProfileChecked
from wizard.screens.base import WizardScreen
from wizard.screens.model import result_text
from wizard.widgets.lora_table import LoraTable

_TABLE_KEYS = {"task", "rank", "preset", "target_modules"}
"""Fields whose change rebuilds the LoRA table."""


def memory_text(result) -> Text:
    """The memory estimate: green when it fits, red when not, dim when unavailable."""
    if result.problems:
        return Text("memory estimate: " + " ".join(result.problems), style="red")
    if "fits" not in result.data:
        return Text("\n".join(result.lines), style="dim")
    text = Text("\n".join(result.lines), style="green" if result.data["fits"] else "bold red")
    rec = result.data.get("recommendation")
    if rec and not result.data["fits"]:
        text.append(f"\nplanner suggests: rank {rec.get('rank')}, micro-batch {rec.get('micro_batch')}, grad accum "
                    f"{rec.get('grad_accum')}, checkpointing {rec.get('gradient_checkpointing')}", style="yellow")
    for reason in result.data.get("reasons", [])[:3]:
        text.append(f"\n  {reason}", style="dim")
    return text


class PlanScreen(WizardScreen):
    step_name = "plan"

    def __init__(self) -> None:
        super().__init__()
        self.parse_errors: dict[str, str] = {}
        """Field id -> message for text that is not the field's type."""
        self.profile_errors: dict[str, str] = {}
        """Field id -> the engine's validation message naming that field's key."""
        self.general_errors: list[str] = []
        self._generation = 0
        self._table_timer: Timer | None = None
        self._edited = False
        """Whether the user changed a value (then the planner's recommendation is shown, not applied)."""
        self._applying = False

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.step_title + "plan (edit any value; Tab moves, Enter continues)", classes="step-title")
        with VerticalScroll(classes="body", id="plan-body"):
            yield Static(self._reasons_text(), id="reasons", classes="result")
            for name in PLAN_FIELDS:
                if shown(name, self.draft):
                    yield from self._row(name, self._widget(name))
            yield Static("", id="general-errors", classes="result error")
            yield Static("", id="summary", classes="result")
            yield Static(result_text(None, "memory estimate..."), id="memory", classes="result")
            yield Static("run time: measured after the first steps (the dashboard shows the ETA)", classes="result dim")
            yield Static("LoRA modules (building the model...)", id="lora-caption", classes="result")
            yield LoraTable(id="lora-table")
        with Horizontal(classes="nav"):
            yield Button("Next", id="next", variant="primary", compact=True)
        yield Footer()

    def _widget(self, name: str) -> Input | Select:
        """The field's editor: a Select for a choice or yes/no, an Input for typed text."""
        field = FIELDS[name]
        if field.kind in ("bool", "choice"):
            value = draft_value(self.draft, name)
            return Select(field_choices(self.draft, name), value="" if value is None else value, allow_blank=False,
                          id=name, compact=True)
        return Input(field_text(self.draft, name), placeholder=field.placeholder, id=name, compact=True)

    def _row(self, name: str, widget: Input | Select) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(FIELDS[name].label, classes="field-label")
            yield widget
        yield Static("", id=f"{name}-error", classes="field-error")
        if name == "preset":
            note = Static("", id="preset-note", classes="field-note")
            self._show_preset(note)
            yield note

    def _show_preset(self, note: Static) -> None:
        """The chosen preset's description under its row (the family declares it)."""
        preset = self.draft.plan.preset
        note.update(Text(f"{preset}: {dict(self.draft.choice.presets).get(preset, '')}", style="dim"))
        note.display = bool(preset)

    def _reasons_text(self) -> Text:
        text = Text("recommended: ", style="bold")
        plan = self.draft.plan
        text.append(f"rank {plan.rank}, batch {plan.batch_size}, checkpointing "
                    f"{'on' if plan.gradient_checkpointing else 'off'}, precision {plan.precision}\n", style="")
        for reason in plan.reasons:
            text.append(f"  {reason}\n", style="dim")
        text.rstrip()
        return text

    def on_mount(self) -> None:
        self.query_one("#next", Button).focus()
        self.revalidate()
        self.refresh_table()
        self.refresh_memory()

    # ------------------------------------------------------------------ edits
    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        name = event.input.id or ""
        if name not in PLAN_FIELDS:
            return
        self._edited = self._edited or not self._applying
        value, error = parse_field(name, event.value)
        if error:
            self.parse_errors[name] = error
        else:
            self.parse_errors.pop(name, None)
        self._show_error(name)
        if error is None:
            set_field(self.draft, name, value)
            self.revalidate()
            if name in _TABLE_KEYS:
                self._schedule_table()

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        name = event.select.id or ""
        if name not in PLAN_FIELDS or event.value is Select.NULL:
            return
        current = draft_value(self.draft, name)
        if event.value == ("" if current is None else current):
            return
        self._edited = self._edited or not self._applying
        set_field(self.draft, name, event.value)
        if name == "preset":
            self._show_preset(self.query_one("#preset-note", Static))
        self.revalidate()
        if name in _TABLE_KEYS:
            self._schedule_table()

    @property
    def errors(self) -> dict[str, str]:
        """Every inline message on screen, by field (a parse error hides the engine's)."""
        return {**self.profile_errors, **self.parse_errors}

    def _show_error(self, name: str) -> None:
        message = self.errors.get(name, "")
        for widget in self.query(f"#{name}-error"):
            widget.update(Text(message, style="red"))
            widget.display = bool(message)

    # ------------------------------------------------------------------ validation
    def revalidate(self) -> None:
        self._generation += 1
        self.validate_draft(self._generation, self.draft.snapshot())

    @work(thread=True, exclusive=True, group="validate")
    def validate_draft(self, generation: int, draft: ProfileDraft) -> None:
        try:
            draft.validate()
            errors: list[str] = []
        except Lora3dError as exc:
            errors = [line for line in str(exc).splitlines() if line.strip()]
        except Exception as exc:  # never crash on an odd value: show it
            errors = [f"{type(exc).__name__}: {exc}"]
        self.post_message(ProfileChecked(errors, generation))

    def on_profile_checked(self, message: ProfileChecked) -> None:
        if message.generation != self._generation:
            return
        by_field: dict[str, list[str]] = {}
        general: list[str] = []
        for line in message.errors:
            text = line.removeprefix("wizard: ")
            owner = next((name for name in PLAN_FIELDS if f"`{FIELDS[name].key}`" in text), None)
            if owner is not None:
                by_field.setdefault(owner, []).append(text)
            else:
                general.append(text)
        self.profile_errors = {name: " ".join(lines) for name, lines in by_field.items()}
        for name in PLAN_FIELDS:
            self._show_error(name)
        self.general_errors = general
        box = self.query_one("#general-errors", Static)
        box.update(Text("\n".join(general), style="red"))
        box.display = bool(general)
        if not message.errors and not self.errors:
            self.query_one("#summary", Static).update(self._summary_text())

    def _summary_text(self) -> Text:
        plan = self.draft.plan
        effective = plan.batch_size * plan.grad_accum * plan.num_gpus
        text = Text(f"effective batch {effective} = {plan.batch_size} x {plan.grad_accum} accumulation"
                    f" x {plan.num_gpus} process{'es' if plan.num_gpus > 1 else ''}")
        if plan.num_gpus > 1:
            text.append("\nruns through accelerate: lora3d train PROFILE --launch", style="cyan")
        return text

    # ------------------------------------------------------------------ LoRA table and memory
    def _schedule_table(self) -> None:
        if self._table_timer is not None:
            self._table_timer.stop()
        self._table_timer = self.set_timer(0.8, self.refresh_table)
        self.refresh_memory()

    def refresh_table(self) -> None:
        self.query_one("#lora-caption", Static).update(Text("LoRA modules (building the model...)", style="dim"))
        self.build_table(self._generation, self.draft.snapshot())

    @work(thread=True, exclusive=True, group="table")
    def build_table(self, generation: int, draft: ProfileDraft) -> None:
        self.post_message(CheckFinished("table", generation, build_lora_table(draft)))

    def refresh_memory(self) -> None:
        self.estimate_memory(self._generation, self.draft.snapshot())

    @work(thread=True, exclusive=True, group="memory")
    def estimate_memory(self, generation: int, draft: ProfileDraft) -> None:
        self.post_message(CheckFinished("memory", generation, plan_memory(draft)))

    def on_check_finished(self, message: CheckFinished) -> None:
        result = message.result
        if message.kind == "memory":
            self.query_one("#memory", Static).update(memory_text(result))
            self._apply_planner(result)
        elif message.kind == "table":
            caption = self.query_one("#lora-caption", Static)
            if not result.ok:
                caption.update(Text("LoRA table: " + " ".join(result.problems), style="red"))
                self.query_one(LoraTable).show([])
                return
            s = result.data
            caption.update(Text(
                f"LoRA: {len(s.get('rows', []))} modules, {s.get('lora_params', 0):,} LoRA of "
                f"{s.get('total_params', 0):,} parameters ({s.get('lora_ratio_percent', 0.0):.2f}%), "
                f"trainable {s.get('trainable_params', 0):,}", style="bold"))
            self.query_one(LoraTable).show(s.get("rows", []))

    def _apply_planner(self, result) -> None:
        """For a real family, the planner's joint recommendation replaces the tier's until the user edits."""
        rec = result.data.get("recommendation")
        if self._edited or self.draft.demo or not rec:
            return
        plan = self.draft.plan
        values = {"rank": rec.get("rank"), "batch_size": rec.get("micro_batch"), "grad_accum": rec.get("grad_accum"),
                  "gradient_checkpointing": rec.get("gradient_checkpointing"), "precision": rec.get("precision")}
        values = {k: v for k, v in values.items() if v is not None and getattr(plan, k) != v}
        if not values:
            return
        self._applying = True
        try:
            for name, value in values.items():
                set_field(self.draft, name, value)
                widget = self.query_one(f"#{name}")
                widget.value = value if isinstance(widget, Select) else str(value)
        finally:
            self.call_after_refresh(self._end_applying)
        plan.reasons = [*plan.reasons, *result.data.get("reasons", [])]
        self.query_one("#reasons", Static).update(self._reasons_text())
        self.revalidate()
        self._schedule_table()

    def _end_applying(self) -> None:
        self._applying = False

    # ------------------------------------------------------------------ navigation
    def done(self) -> None:
        if self.errors or self.general_errors:
            self.notify("fix the values marked in red first", severity="error")
            return
        try:
            self.draft.validate()
        except Lora3dError as exc:
            self.general_errors = str(exc).splitlines()
            box = self.query_one("#general-errors", Static)
            box.update(Text(str(exc), style="red"))
            box.display = True
            return
        super().done()
