"""Provides the wizard's model list, read from the families' declarations (`Family.wizard`, a `WizardSpec`).

A family appears when it declares a WizardSpec: one line for the family (a new profile from
`WizardSpec.new_profile`) and, when it ships a demo profile, one line for its demo just above it. Nothing
here names a family; a plugin family (`LORA3D_PLUGINS`) is listed like a built-in one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from engine.errors import ProfileError
from engine.families.registry import family_entries, get_family

if TYPE_CHECKING:  # engine.families.base pulls in torch and PEFT; the registry imports families when asked
    from engine.families.base import WizardSpec


@dataclass(frozen=True)
class ModelChoice:
    """One line of the model list.

    Attributes:
        id: `<family>` or `demo-<family>` (the plain wizard's answer, the option's id).
        family: the family name (`model.family`).
        demo: whether the profile starts from the family's demo profile.
        label: the line shown.
        family_label: the family's own one-line label.
        spec: the family's wizard declaration.
        presets: the family's LoRA preset names and descriptions, in its order.
        tasks: the family's tasks, its default first.
    """

    id: str
    family: str
    demo: bool
    label: str
    family_label: str
    spec: WizardSpec
    presets: tuple[tuple[str, str], ...] = ()
    tasks: tuple[str, ...] = ()

    @property
    def short_name(self) -> str:
        """The family label's part before the colon (the short name), plus ` demo` for a demo."""
        return self.family_label.split(":")[0] + (" demo" if self.demo else "")

    def description(self) -> str:
        """What the model screen says about this choice."""
        if not self.demo or self.spec.demo_profile is None:
            return self.spec.description
        return f"{self.spec.description}\nStarts from the shipped demo profile {self.spec.demo_profile.name}."

    def base_data(self) -> dict[str, Any]:
        """The profile this choice starts from: the demo profile's contents, or the family's new profile."""
        if self.demo:
            return demo_profile_data(self.spec.demo_profile)
        data = copy.deepcopy(dict(self.spec.new_profile))
        data.setdefault("schema_version", 1)
        data.setdefault("model", {})["family"] = self.family
        return data


def demo_profile_data(path: Path | None) -> dict[str, Any]:
    """A family's shipped demo profile as plain data.

    Raises:
        ProfileError: the file is missing or is not a YAML mapping (a partial checkout).
    """
    if path is None or not path.is_file():
        raise ProfileError(f"{path}: the demo profile is missing. Restore it from the repository (git checkout -- "
                           f"{path}), or choose the family itself instead of its demo.")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: the demo profile is not a YAML mapping. Restore it from the repository.")
    return data


def _preset_lines(family: Any) -> tuple[tuple[str, str], ...]:
    return tuple((name, str(getattr(preset, "description", ""))) for name, preset in family.presets.items())


@cache
def _choices(names: tuple[str, ...]) -> tuple[ModelChoice, ...]:
    families = [get_family(name) for name in names]
    declared = sorted((f for f in families if f.wizard is not None), key=lambda f: (f.wizard.order, f.name))
    choices: list[ModelChoice] = []
    for family in declared:
        spec = family.wizard
        tasks = (family.default_task, *(t for t in family.tasks if t != family.default_task)) if family.tasks else ()
        common = {"family": family.name, "family_label": family.label, "spec": spec,
                  "presets": _preset_lines(family), "tasks": tasks}
        if spec.demo_profile is not None:
            label = spec.demo_label or f"{family.label.split(':')[0]} demo"
            choices.append(ModelChoice(id=f"demo-{family.name}", demo=True, label=label, **common))
        choices.append(ModelChoice(id=family.name, demo=False, label=family.label, **common))
    return tuple(choices)


def model_choices() -> tuple[ModelChoice, ...]:
    """Every choice of the model list, in the families' declared order (importing each family once)."""
    return _choices(tuple(family_entries()))


def find_choice(family: str, demo: bool = False) -> ModelChoice:
    """The choice of `family` (its demo when `demo`).

    Raises:
        ProfileError: no such family with a wizard declaration, or it has no demo.
    """
    for choice in model_choices():
        if choice.family == family and choice.demo == demo:
            return choice
    known = ", ".join(f"`{c.id}`" for c in model_choices())
    what = f"the {family} family has no demo profile" if demo and family in family_entries() else (
        f"no family {family!r} with a wizard declaration")
    raise ProfileError(f"wizard: {what}. Choose one of {known}.")


def choice_by_id(choice_id: str) -> ModelChoice:
    """The choice with this id (`<family>` or `demo-<family>`); ProfileError listing the ids otherwise."""
    for choice in model_choices():
        if choice.id == choice_id:
            return choice
    known = ", ".join(f"`{c.id}`" for c in model_choices())
    raise ProfileError(f"wizard: the model choice {choice_id!r} does not exist. Choose one of {known}.")


def default_choice() -> ModelChoice:
    """The first listed demo (it runs with no data and no weights), else the first family.

    Raises:
        ProfileError: no family declares a WizardSpec.
    """
    choices = model_choices()
    if not choices:
        raise ProfileError("wizard: no model family declares a wizard entry (`Family.wizard`). Reinstall lora3d, "
                           "or add a family plugin with LORA3D_PLUGINS.")
    return next((c for c in choices if c.demo), choices[0])
