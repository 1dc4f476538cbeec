"""Provides the plain-terminal wizard (questionary) and the line-per-event run follower.

The questions are the wizard's field table (`wizard.fields`), answered by questionary on a terminal, by a
dict in tests, or by their defaults with `--demo`; the answers go through the same parser and fill the same
ProfileDraft the TUI fills.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ProfileError
from engine.train.run_state import event_line  # noqa: F401  (re-exported: the engine's one event rendering)
from engine.train.watch import watch_plain  # noqa: F401  (re-exported: the engine's line-per-event follower)
from wizard.draft import ProfileDraft, suggest_profile_path
from wizard.fields import (
    FIELDS,
    PLAIN_FIELDS,
    draft_value,
    field_choices,
    field_text,
    parse_answer,
    set_field,
    shown,
)


@dataclass
class PlainQuestion:
    """One question of a field: `kind` is `select`, `text` or `confirm` (how questionary asks it)."""

    key: str
    message: str
    kind: str
    default: Any
    choices: list[tuple[str, Any]] = field(default_factory=list)

    def check(self, draft: ProfileDraft, answer: Any) -> str | None:
        """The field parser's message for this answer, or None when it is fine."""
        return parse_answer(draft, self.key, answer)[1]


def question_for(draft: ProfileDraft, name: str, profiles_dir: Path) -> PlainQuestion:
    """The plain question of a field, with the draft's current (recommended) value as its default."""
    spec = FIELDS[name]
    if spec.kind == "bool":
        return PlainQuestion(name, spec.question, "confirm", bool(draft_value(draft, name)))
    if spec.kind == "choice":
        return PlainQuestion(name, spec.question, "select", draft_value(draft, name), field_choices(draft, name))
    default = str(suggest_profile_path(draft.name, profiles_dir)) if name == "save_path" else field_text(draft, name)
    return PlainQuestion(name, spec.question, "text", default)


def family_question(draft: ProfileDraft) -> PlainQuestion:
    return question_for(draft, "family", Path("."))


def plain_questions(draft: ProfileDraft, profiles_dir: Path) -> list[PlainQuestion]:
    """The questions after the model, with the chosen family's recommended defaults."""
    return [question_for(draft, name, profiles_dir) for name in PLAIN_FIELDS if shown(name, draft)]


def questionary_answer(question: PlainQuestion, draft: ProfileDraft | None = None) -> Any:
    """Asks on the terminal, re-asking until the field's parser accepts the text (KeyboardInterrupt on Ctrl-C)."""
    import questionary  # lazy: only a terminal session asks

    if question.kind == "select":
        choices = [questionary.Choice(label, value=value) for label, value in question.choices]
        default = next((c for c in choices if c.value == question.default), None)
        return questionary.select(question.message, choices=choices, default=default).unsafe_ask()
    if question.kind == "confirm":
        return questionary.confirm(question.message, default=bool(question.default)).unsafe_ask()

    def validate(text: str) -> bool | str:
        return (question.check(draft, text) if draft is not None else None) or True

    return questionary.text(question.message, default=str(question.default), validate=validate).unsafe_ask()


def answers_from(mapping: dict[str, Any]) -> Callable[..., Any]:
    """An answerer for tests and --demo: the mapping's value, else the question's default."""
    def answer(question: PlainQuestion, draft: ProfileDraft | None = None) -> Any:
        return mapping.get(question.key, question.default)

    return answer


def run_plain(draft: ProfileDraft, answer: Callable[..., Any], profiles_dir: Path,
              confirm_overwrite: Callable[[Path], bool] | None = None) -> Path:
    """Asks every question, saves the profile and returns its path.

    Raises:
        ProfileError: an answer fails its check (plain answers cannot be re-asked in a script) or the
            profile does not validate; the message lists every problem.
    """
    from engine.profile import save_profile  # lazy: pydantic models, only when saving

    question = family_question(draft)
    value, error = parse_answer(draft, "family", answer(question, draft))
    if error:
        raise ProfileError(error)
    set_field(draft, "family", value)
    save_path: Path | None = None
    errors = []
    for question in plain_questions(draft, profiles_dir):
        value, error = parse_answer(draft, question.key, answer(question, draft))
        if error:
            errors.append(error)
        elif question.key == "save_path":
            save_path = value
        else:
            set_field(draft, question.key, value)
    if errors:
        raise ProfileError("\n".join(errors))
    profile = draft.validate()
    assert save_path is not None
    if save_path.exists() and not (confirm_overwrite and confirm_overwrite(save_path)):
        raise ProfileError(f"{save_path}: exists and was kept. Choose another name, or confirm the overwrite.")
    save_profile(profile, save_path, header=draft.profile_header(save_path))
    return save_path
