"""Provides the profile draft: the wizard's answers so far and the profile they make.

The TUI screens and the plain questionary path both fill a `ProfileDraft`; `profile_dict()` turns it into
the plain data `engine.profile.validate_profile` checks, so both paths write the same profile.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.hardware import HardwareInfo
from engine.memory.fingerprint import hardware_fingerprint
from engine.memory.tiers import TierRecommendation, recommend_tier
from engine.profile import Profile
from engine.profile.load import apply_overrides, parse_overrides
from wizard.choices import ModelChoice, default_choice, find_choice

if TYPE_CHECKING:  # the recipe pulls in torch and PEFT (seconds): the wizard's first screen does not wait
    from engine.families.base import Recipe

REPO_ROOT = Path(__file__).resolve().parent.parent

PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class PlanChoice:
    """The values the Plan screen shows and edits (recommended first, then the user's)."""

    rank: int = 8
    batch_size: int = 2
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    precision: str = "no"
    lr: float | None = None
    max_steps: int | None = None
    preset: str | None = None
    target_modules: list[str] | None = None
    num_gpus: int = 1
    reasons: list[str] = field(default_factory=list)


@dataclass
class ProfileDraft:
    """Everything the wizard has asked so far.

    Attributes:
        hardware: the probe result (None until probed).
        family: the family name (`model.family`); None until chosen (then the model list's default).
        demo: the profile starts from the family's demo profile (`WizardSpec.demo_profile`).
        task: the family task (None: the family's default, or the demo profile's).
        pretrained: base checkpoint file or folder (None: random base, or the demo's own base).
        data_root: dataset folder (None: the built-in synthetic data).
        plan: rank, batch and the rest, as recommended then edited.
        name: run/profile name.
        overrides: dotted keys applied last (tests use them to shorten runs).
        extra: the user's `KEY=VALUE` settings, applied before `overrides`.
    """

    hardware: HardwareInfo | None = None
    family: str | None = None
    demo: bool = False
    task: str | None = None
    pretrained: Path | None = None
    data_root: Path | None = None
    plan: PlanChoice = field(default_factory=PlanChoice)
    name: str = "wizard-demo"
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    """The user's own `KEY=VALUE` settings (any profile key, e.g. `model.num_classes=20`), as with `--set`."""

    @property
    def choice(self) -> ModelChoice:
        """The model list's line this draft starts from (the list's default until a family is chosen)."""
        return default_choice() if self.family is None else find_choice(self.family, self.demo)

    @property
    def tier(self) -> TierRecommendation | None:
        return recommend_tier(self.hardware) if self.hardware is not None else None

    def snapshot(self) -> ProfileDraft:
        """A deep copy for a worker thread: the screens keep editing the live draft meanwhile."""
        return copy.deepcopy(self)

    def base_data(self) -> dict[str, Any]:
        """The profile this choice starts from, before the answers and the plan's values."""
        return self.choice.base_data()

    def set_family(self, family: str, demo: bool = False) -> None:
        """Chooses the family (its demo profile when `demo`) and resets the plan to its recommendation.

        Raises:
            ProfileError: no such family in the model list, or it has no demo.
        """
        choice = find_choice(family, demo)
        self.family, self.demo, self.task = choice.family, choice.demo, None
        self.name = "wizard-demo" if demo else f"{family}-lora"
        self.plan = self.recommended_plan()

    def choose(self, choice: ModelChoice) -> None:
        self.set_family(choice.family, choice.demo)

    def recommended_plan(self) -> PlanChoice:
        """The tier recommendation for this hardware (a demo keeps its own profile's values)."""
        choice = self.choice
        if choice.demo:
            base = choice.base_data()
            lora, train = base.get("lora") or {}, base.get("train") or {}
            return PlanChoice(
                rank=int(lora.get("r", 8)), batch_size=int(train.get("batch_size", 2)),
                grad_accum=int(train.get("grad_accum", 1)),
                gradient_checkpointing=bool(train.get("gradient_checkpointing", False)),
                precision=str(train.get("mixed_precision", "no")), max_steps=train.get("max_steps"),
                lr=train.get("lr"), target_modules=lora.get("target_modules"),
                reasons=[f"the demo profile's own settings ({choice.spec.demo_profile.name}): sized for any "
                         "machine, CPU included"],
            )
        rec = self.tier
        if rec is None:
            return PlanChoice()
        targets = (choice.spec.new_profile.get("lora") or {}).get("target_modules")
        return PlanChoice(
            rank=rec.rank, batch_size=rec.batch_size, gradient_checkpointing=rec.gradient_checkpointing,
            precision=rec.precision, target_modules=list(targets) if targets else None,
            max_steps=None, reasons=[rec.reason] + ([rec.warning] if rec.warning else []),
        )

    def profile_dict(self) -> dict[str, Any]:
        """The profile as plain data: the choice's base, then answers, then the plan, then overrides."""
        data = self.base_data()
        data["name"] = self.name
        model = data.setdefault("model", {})
        if self.task is not None:
            model["task"] = self.task
        if self.pretrained is not None:
            model["pretrained"] = str(self.pretrained)
        if self.data_root is not None:
            data.setdefault("data", {})["root"] = str(self.data_root)
        lora = data.setdefault("lora", {})
        train = data.setdefault("train", {})
        plan = self.plan
        if lora.get("alpha") is not None and lora.get("r"):
            # keep the starting profile's alpha/r scale when the rank is edited
            lora["alpha"] = float(lora["alpha"]) * plan.rank / float(lora["r"])
        lora["r"] = plan.rank
        if plan.preset:
            lora["preset"] = plan.preset
        if plan.target_modules:
            lora["target_modules"] = list(plan.target_modules)
        train["batch_size"] = plan.batch_size
        train["grad_accum"] = plan.grad_accum
        train["gradient_checkpointing"] = plan.gradient_checkpointing
        train["mixed_precision"] = plan.precision
        if plan.lr is not None:
            train["lr"] = plan.lr
        if plan.max_steps is not None:
            train["max_steps"] = plan.max_steps
        if plan.num_gpus > 1:
            data.setdefault("launch", {})["num_processes"] = plan.num_gpus
        data.setdefault("output", {})["dir"] = f"runs/{self.name}"
        if self.hardware is not None:
            data["hardware"] = hardware_fingerprint(self.hardware).model_dump(mode="json", exclude_none=True)
        if self.extra:
            data = apply_overrides(data, parse_overrides(self.extra))
        if self.overrides:
            data = apply_overrides(data, list(self.overrides.items()))
        return data

    def recipe(self) -> Recipe:
        """The resolved Recipe of the draft; ProfileError listing every problem otherwise."""
        from engine.families.recipe import resolve_recipe  # lazy: torch and PEFT take seconds

        return resolve_recipe(self.profile_dict(), source="wizard")

    def validate(self) -> Profile:
        """The resolved Profile (what gets saved and run); ProfileError listing every problem otherwise."""
        return self.recipe().profile

    def train_command(self, profile_path: Path | str) -> str:
        """The equivalent headless command line."""
        launch = " --launch" if self.plan.num_gpus > 1 else ""
        return f"lora3d train {profile_path}{launch}"

    def profile_header(self, profile_path: Path | str) -> str:
        """The 'how to run' comment written on top of the saved profile."""
        return (
            f"Written by the lora3d wizard ({self.choice.short_name}).\n\n"
            "How to run:\n"
            f"  {self.train_command(profile_path)}\n"
            f"  {self.train_command(profile_path)} --set train.max_steps=2   # smoke test\n"
            f"  lora3d watch runs/{self.name}                  # reattach the dashboard"
        )


def suggest_profile_path(name: str, folder: Path) -> Path:
    """`folder/<name>.yaml`, or the first `<name>-N.yaml` that does not exist yet."""
    path = folder / f"{name}.yaml"
    n = 2
    while path.exists():
        path = folder / f"{name}-{n}.yaml"
        n += 1
    return path


def free_run_dir(path: Path) -> Path:
    """`path` when it has no events yet, else the first `path-N` that is free (a new run never appends)."""
    candidate, n = path, 2
    while (candidate / "events.jsonl").exists() or (candidate.exists() and any(candidate.iterdir())):
        candidate = path.with_name(f"{path.name}-{n}")
        n += 1
    return candidate
