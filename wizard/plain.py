"""Provides the plain-terminal wizard (questionary) and the line-per-event run follower.

The questions are data (`plain_questions`), answered by questionary on a terminal, by a dict in tests,
or by their defaults with `--demo`; the answers fill the same ProfileDraft the TUI fills.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ProfileError
from engine.train.run_state import event_line  # noqa: F401  (re-exported: the engine's one event rendering)
from engine.train.watch import watch_plain  # noqa: F401  (re-exported: the engine's line-per-event follower)
from wizard.draft import FAMILY_CHOICES, PRECISIONS, ProfileDraft, suggest_profile_path


@dataclass
class PlainQuestion:
    """One question: `kind` is `select`, `text`, `int`, `confirm`; `check` returns an error message or None."""

    key: str
    message: str
    kind: str
    default: Any
    choices: list[tuple[str, Any]] = field(default_factory=list)
    check: Callable[[str], str | None] | None = None


def _int_check(key: str, low: int = 1) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        try:
            value = int(text)
        except ValueError:
            return f"`{key}` must be a whole number, got {text!r}."
        return None if value >= low else f"`{key}` must be at least {low}, got {value}."

    return check


def _path_check(kind: str) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        if not text.strip():
            return None
        path = Path(text).expanduser()
        if not path.exists():
            return f"{text}: not found. Type an existing {kind}, or leave it empty."
        return None

    return check


def _extra_check(text: str) -> str | None:
    from engine.profile.load import parse_overrides

    try:
        parse_overrides(text.split())
    except ProfileError as exc:
        return str(exc)
    return None


def family_question(draft: ProfileDraft) -> PlainQuestion:
    return PlainQuestion("family", "Model family", "select", draft.family,
                         [(label, name) for name, label in FAMILY_CHOICES.items()])


def plain_questions(draft: ProfileDraft, profiles_dir: Path) -> list[PlainQuestion]:
    """The questions after the family, with the family's recommended defaults."""
    plan = draft.plan
    questions = []
    if draft.family != "demo":
        questions.append(PlainQuestion("pretrained", "Base checkpoint file or folder (empty: random base)", "text", "",
                                       check=_path_check("file or folder")))
    questions += [
        PlainQuestion("data_root", "Dataset folder (empty: built-in synthetic data)", "text", "",
                      check=_path_check("folder")),
    ]
    if draft.family != "demo":
        questions.append(PlainQuestion("extra", "Extra settings as KEY=VALUE, space separated (e.g. "
                                       "model.num_classes=20; empty: none)", "text", "", check=_extra_check))
    questions += [
        PlainQuestion("rank", "LoRA rank", "int", str(plan.rank), check=_int_check("lora.r")),
        PlainQuestion("batch_size", "Batch size", "int", str(plan.batch_size), check=_int_check("train.batch_size")),
        PlainQuestion("gradient_checkpointing", "Gradient checkpointing", "confirm", plan.gradient_checkpointing),
        PlainQuestion("precision", "Precision", "select", plan.precision, [(p, p) for p in PRECISIONS]),
        PlainQuestion("save_path", "Save the profile as", "text",
                      str(suggest_profile_path(draft.name, profiles_dir))),
    ]
    return questions


def apply_answer(draft: ProfileDraft, key: str, value: Any) -> None:
    """Stores one answer in the draft (text already checked)."""
    if key == "family":
        draft.set_family(value)
    elif key == "pretrained":
        draft.pretrained = Path(value).expanduser() if str(value).strip() else None
    elif key == "data_root":
        draft.data_root = Path(value).expanduser() if str(value).strip() else None
    elif key == "extra":
        draft.extra = str(value).split()
    elif key in ("rank", "batch_size"):
        setattr(draft.plan, key, int(value))
    elif key == "gradient_checkpointing":
        draft.plan.gradient_checkpointing = bool(value)
    elif key == "precision":
        draft.plan.precision = str(value)


def questionary_answer(question: PlainQuestion) -> Any:
    """Asks on the terminal (raises KeyboardInterrupt on Ctrl-C)."""
    import questionary

    if question.kind == "select":
        choices = [questionary.Choice(label, value=value) for label, value in question.choices]
        default = next((c for c in choices if c.value == question.default), None)
        return questionary.select(question.message, choices=choices, default=default).unsafe_ask()
    if question.kind == "confirm":
        return questionary.confirm(question.message, default=bool(question.default)).unsafe_ask()
    check = question.check
    return questionary.text(question.message, default=str(question.default),
                            validate=(lambda text: check(text) or True) if check else None).unsafe_ask()


def answers_from(mapping: dict[str, Any]) -> Callable[[PlainQuestion], Any]:
    """An answerer for tests and --demo: the mapping's value, else the question's default."""
    def answer(question: PlainQuestion) -> Any:
        return mapping.get(question.key, question.default)

    return answer


def run_plain(draft: ProfileDraft, answer: Callable[[PlainQuestion], Any], profiles_dir: Path,
              confirm_overwrite: Callable[[Path], bool] | None = None) -> Path:
    """Asks every question, saves the profile and returns its path.

    Raises:
        ProfileError: an answer fails its check (plain answers cannot be re-asked in a script) or the
            profile does not validate; the message lists every problem.
    """
    from engine.profile import save_profile

    apply_answer(draft, "family", answer(family_question(draft)))
    save_path: Path | None = None
    errors = []
    for question in plain_questions(draft, profiles_dir):
        value = answer(question)
        if question.check is not None:
            message = question.check(str(value))
            if message:
                errors.append(message)
                continue
        if question.key == "save_path":
            save_path = Path(str(value)).expanduser()
        else:
            apply_answer(draft, question.key, value)
    if errors:
        raise ProfileError("\n".join(errors))
    profile = draft.validate()
    assert save_path is not None
    if save_path.suffix not in (".yaml", ".yml"):
        raise ProfileError(f"save path: the profile must be a .yaml file, got {str(save_path)!r}. Add .yaml.")
    if save_path.exists() and not (confirm_overwrite and confirm_overwrite(save_path)):
        raise ProfileError(f"{save_path}: exists and was kept. Choose another name, or confirm the overwrite.")
    save_profile(profile, save_path, header=draft.profile_header(save_path))
    return save_path

