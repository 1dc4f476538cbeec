"""Provides the profile draft: the wizard's answers so far and the profile they make.

The TUI screens and the plain questionary path both fill a `ProfileDraft`; `profile_dict()` turns it into
the plain data `engine.profile.validate_profile` checks, so both paths write the same profile.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.hardware import HardwareInfo
from engine.memory.tiers import TierRecommendation, recommend_tier

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO_ROOT / "profiles" / "demo-scenesplat.yaml"

FAMILY_CHOICES: dict[str, str] = {
    "demo": "Built-in demo (SceneSplat, synthetic rooms, tiny base; runs on a CPU)",
    "scenesplat": "SceneSplat: Point Transformer V3 over 3D Gaussian splats",
    "midi": "MIDI-3D: rectified-flow DiT for multi-instance 3D scenes",
}
"""Wizard choice -> label; `demo` is the SceneSplat demo profile."""

PRECISIONS = ("no", "bf16", "fp16")

# What a new profile for a real family starts from; the wizard's answers fill in the rest.
_FAMILY_BASES: dict[str, dict[str, Any]] = {
    "scenesplat": {"model": {"family": "scenesplat", "task": "semseg"}, "lora": {"target_modules": ["attn"]}},
    "midi": {"model": {"family": "midi", "task": "flow"}, "lora": {"target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}},
}

# The demo profile, used when the shipped file is missing (a partial checkout).
_DEMO_FALLBACK: dict[str, Any] = {
    "schema_version": 1,
    "name": "demo-scenesplat",
    "model": {"family": "scenesplat", "task": "semseg", "backbone": "demo-tiny", "demo_base": True},
    "lora": {"r": 8, "alpha": 16, "target_modules": ["attn", "mlp"], "encoder_only": False},
    "data": {"grid_size": 0.05, "synthetic_domain": "B", "synthetic_train": 8, "synthetic_val": 4,
             "synthetic_points": 2500},
    "train": {"max_steps": 40, "batch_size": 2, "lr": 0.004, "warmup_steps": 2, "device": "cpu"},
    "output": {"dir": "runs/demo-scenesplat", "tensorboard": False},
}


def demo_profile_data() -> dict[str, Any]:
    """The shipped SceneSplat demo profile as plain data."""
    if DEMO_PROFILE.is_file():
        data = yaml.safe_load(DEMO_PROFILE.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return copy.deepcopy(_DEMO_FALLBACK)


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
        family: `demo`, `scenesplat` or `midi`.
        pretrained: base checkpoint file or folder (None: random base, or the demo's cached base).
        data_root: dataset folder (None: the built-in synthetic data).
        plan: rank, batch and the rest, as recommended then edited.
        name: run/profile name.
        overrides: dotted keys applied last (tests use them to shorten runs).
        extra: the user's `KEY=VALUE` settings, applied before `overrides`.
    """

    hardware: HardwareInfo | None = None
    family: str = "demo"
    pretrained: Path | None = None
    data_root: Path | None = None
    plan: PlanChoice = field(default_factory=PlanChoice)
    name: str = "wizard-demo"
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    """The user's own `KEY=VALUE` settings (any profile key, e.g. `model.num_classes=20`), as with `--set`."""

    @property
    def engine_family(self) -> str:
        """The engine family name (`demo` is SceneSplat)."""
        return "scenesplat" if self.family == "demo" else self.family

    @property
    def tier(self) -> TierRecommendation | None:
        return recommend_tier(self.hardware) if self.hardware is not None else None

    def base_data(self) -> dict[str, Any]:
        """The profile this family starts from, before the plan's values."""
        if self.family == "demo":
            return demo_profile_data()
        data = copy.deepcopy(_FAMILY_BASES[self.family])
        data["schema_version"] = 1
        return data

    def set_family(self, family: str) -> None:
        """Chooses the family and resets the plan to its recommendation."""
        if family not in FAMILY_CHOICES:
            raise ValueError(family)
        self.family = family
        self.name = "wizard-demo" if family == "demo" else f"{family}-lora"
        self.plan = self.recommended_plan()

    def recommended_plan(self) -> PlanChoice:
        """The tier recommendation for this hardware (the demo keeps its own CPU-sized values)."""
        if self.family == "demo":
            base = demo_profile_data()
            lora, train = base.get("lora", {}), base.get("train", {})
            return PlanChoice(
                rank=int(lora.get("r", 8)), batch_size=int(train.get("batch_size", 2)),
                grad_accum=int(train.get("grad_accum", 1)),
                gradient_checkpointing=bool(train.get("gradient_checkpointing", False)),
                precision=str(train.get("mixed_precision", "no")), max_steps=train.get("max_steps"),
                lr=train.get("lr"), target_modules=lora.get("target_modules"),
                reasons=["the demo profile's own settings: a tiny model that fits any machine, CPU included"],
            )
        rec = self.tier
        if rec is None:
            return PlanChoice()
        base = _FAMILY_BASES[self.family]
        return PlanChoice(
            rank=rec.rank, batch_size=rec.batch_size, gradient_checkpointing=rec.gradient_checkpointing,
            precision=rec.precision, target_modules=list(base["lora"]["target_modules"]),
            max_steps=None, reasons=[rec.reason] + ([rec.warning] if rec.warning else []),
        )

    def profile_dict(self) -> dict[str, Any]:
        """The profile as plain data: family base, then answers, then the plan, then overrides."""
        from engine.profile.load import apply_overrides

        data = self.base_data()
        data["name"] = self.name
        model = data.setdefault("model", {})
        if self.pretrained is not None:
            model["pretrained"] = str(self.pretrained)
            model.pop("demo_base", None)
        if self.data_root is not None:
            data.setdefault("data", {})["root"] = str(self.data_root)
        lora = data.setdefault("lora", {})
        train = data.setdefault("train", {})
        plan = self.plan
        if lora.get("alpha") is not None and lora.get("r"):
            # keep the demo's alpha/r scale when the rank is edited
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
            from engine.memory.fingerprint import hardware_fingerprint

            data["hardware"] = hardware_fingerprint(self.hardware).model_dump(mode="json", exclude_none=True)
        if self.extra:
            from engine.profile.load import parse_overrides

            data = apply_overrides(data, parse_overrides(self.extra))
        if self.overrides:
            data = apply_overrides(data, list(self.overrides.items()))
        return data

    def recipe(self):
        """The resolved Recipe of the draft; ProfileError listing every problem otherwise."""
        from engine.families.recipe import resolve_recipe

        return resolve_recipe(self.profile_dict(), source="wizard")

    def validate(self):
        """The resolved Profile (what gets saved and run); ProfileError listing every problem otherwise."""
        return self.recipe().profile

    def train_command(self, profile_path: Path | str) -> str:
        """The equivalent headless command line."""
        launch = " --launch" if self.plan.num_gpus > 1 else ""
        return f"lora3d train {profile_path}{launch}"

    def profile_header(self, profile_path: Path | str) -> str:
        """The 'how to run' comment written on top of the saved profile."""
        return (
            f"Written by the lora3d wizard ({FAMILY_CHOICES[self.family].split(':')[0]}).\n\n"
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
