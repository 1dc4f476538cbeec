"""Provides the slow checks the wizard runs in thread workers: base checkpoint, data, data preview, LoRA table,
memory plan.

Each takes a snapshot of the draft (`ProfileDraft.snapshot()`), returns a plain result object and never raises
for a user problem: lora3d errors become `problems` the screen lists inline.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from engine.cache import cache_root
from engine.errors import Lora3dError
from engine.profile.load import parse_overrides
from wizard.draft import ProfileDraft
from wizard.run.state import format_bytes

if TYPE_CHECKING:  # torch and the recipe load in the check workers, not at the wizard's start
    from torch import nn

    from engine.families.base import Recipe


@dataclass
class CheckResult:
    """Outcome of one check: `ok`, human lines to show, problems to list, and the raw data."""

    ok: bool
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _problem_lines(exc: BaseException) -> list[str]:
    return [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]


def _inspect_model(recipe: Recipe) -> nn.Module:
    """The recipe's model for inspection, built without training anything.

    A recipe whose base is a prerequisite not built yet (a demo's cached base, pretrained on first use in
    minutes) gets the prerequisite run's own model instead: the same layout with random weights.
    """
    from engine.families.recipe import resolve_recipe  # lazy: torch and PEFT, only in the check workers

    missing = [p for p in recipe.family.prerequisites(recipe) if not p.path.exists()]
    if missing:
        base = resolve_recipe(dict(missing[0].profile), source=f"<{missing[0].description}>")
        return recipe.family.build_model(base)
    return recipe.family.build_model(recipe)


def _base_lines(recipe: Recipe) -> list[str]:
    """What the run will start from when it names no base file: its prerequisites, or a random base."""
    lines = []
    for prerequisite in recipe.family.prerequisites(recipe):
        state = "cached" if prerequisite.path.exists() else "built on first use, by a training run of its own"
        lines.append(f"base: {prerequisite.description}; {state} ({prerequisite.path})")
    return lines or ["no base checkpoint: a randomly initialised base (smoke tests only)"]


def check_checkpoint(draft: ProfileDraft) -> CheckResult:
    """Whether `draft.pretrained` exists and loads into the family's model, with a key report.

    Without a path, says what the run starts from instead (a demo's cached base, or a random base).
    Call it on a snapshot of the draft (`draft.snapshot()`): it runs in a worker thread.
    """
    path = draft.pretrained
    if path is not None and not path.exists():
        return CheckResult(False, problems=[f"{path}: not found. Type the checkpoint file or the pipeline folder."])
    try:
        recipe = draft.recipe()
        if path is None:
            return CheckResult(True, _base_lines(recipe))
        model = recipe.family.build_model(recipe)
    except Lora3dError as exc:
        return CheckResult(False, problems=_problem_lines(exc))
    except Exception as exc:  # a file that is not a checkpoint at all: show it, never crash the wizard
        return CheckResult(False, problems=[f"{path}: could not be loaded ({type(exc).__name__}: {exc})."])
    total = sum(p.numel() for p in model.parameters())
    lines = [f"loaded {type(model).__name__}: {total:,} parameters"]
    report = getattr(model, "lora3d_base", None)
    if isinstance(report, dict):
        for key in ("loaded", "missing", "unexpected", "mismatched", "skipped"):
            value = report.get(key)
            if value:
                count = len(value) if isinstance(value, (list, tuple, dict)) else value
                lines.append(f"{key} keys: {count}")
    config = getattr(model, "config", None)
    if config is not None:
        for key in ("num_layers", "width", "num_attention_heads", "in_channels", "cross_attention_dim"):
            if key in config:
                lines.append(f"{key}: {config[key]}")
    lines += [f"note: {note}" for note in getattr(model, "lora3d_notes", None) or []]
    return CheckResult(True, lines, data={"total_params": total})


def check_data(draft: ProfileDraft, width: int = 76) -> CheckResult:
    """The family's data check (counts, problems), rendered as text for the screen."""
    if draft.extra:
        try:
            parse_overrides(draft.extra)
        except Lora3dError as exc:
            return CheckResult(False, problems=_problem_lines(exc))
    if draft.data_root is not None and not draft.data_root.is_dir():
        return CheckResult(False, problems=[f"{draft.data_root}: folder not found. Type the dataset folder, or clear it "
                                            "to use the built-in synthetic data."])
    try:
        recipe = draft.recipe()
        try:
            report = recipe.family.data_check(recipe)
        except NotImplementedError:  # the contract's default: the family declares no data check
            return CheckResult(True, [f"the {recipe.family.name} family has no data check: its data is read when "
                                      "training starts"])
        data = report.to_dict()
        console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
        report.render(console)
        lines = console.export_text().rstrip().splitlines()
    except Lora3dError as exc:
        return CheckResult(False, problems=_problem_lines(exc))
    except Exception as exc:
        return CheckResult(False, problems=[f"data check failed: {type(exc).__name__}: {exc}"])
    problems = [" ".join(str(x) for x in p) if isinstance(p, (list, tuple)) else str(p) for p in data.get("problems") or []]
    return CheckResult(not problems, lines, problems, data)


def data_preview_folder(draft: ProfileDraft) -> Path:
    """Where the data preview of this draft's data goes: the cache (rebuilt on demand), one folder per
    (family, demo, data folder, settings), so a preview still drawing for an earlier answer never mixes in."""
    key = repr((draft.family, draft.demo, str(draft.data_root), list(draft.extra)))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / "data-preview" / f"{draft.family or 'default'}-{digest}"


def preview_data(draft: ProfileDraft, folder: Path | None = None) -> CheckResult:
    """The family's pictures of one training item (`Family.preview_data`), written into `folder`.

    `data["paths"]` lists the PNG files; a family that draws none says so in `lines`.
    """
    folder = data_preview_folder(draft) if folder is None else folder
    try:
        recipe = draft.recipe()
        paths = [Path(p) for p in recipe.family.preview_data(recipe, folder)]
    except Lora3dError as exc:
        return CheckResult(False, problems=_problem_lines(exc))
    except Exception as exc:  # a family's drawing bug must not end the wizard: show it
        return CheckResult(False, problems=[f"data preview failed: {type(exc).__name__}: {exc}"])
    if not paths:
        return CheckResult(True, [f"the {recipe.family.name} family draws no data preview"], data={"paths": []})
    where = paths[0].parent if all(p.parent == paths[0].parent for p in paths) else folder
    return CheckResult(True, [f"one training item, as read: {len(paths)} picture(s) in {where}"],
                       data={"paths": [str(p) for p in paths]})


def build_lora_table(draft: ProfileDraft) -> CheckResult:
    """Builds the model with LoRA (random base of the same layout) and returns `lora_summary`."""
    from engine.lora.inject import apply_lora_spec  # lazy: torch and PEFT, only in the check workers
    from engine.lora.summary import lora_summary  # lazy: as above

    try:
        recipe = draft.recipe()
        model = apply_lora_spec(_inspect_model(recipe), recipe.lora)
        summary = lora_summary(model)
    except Lora3dError as exc:
        return CheckResult(False, problems=_problem_lines(exc))
    except Exception as exc:
        return CheckResult(False, problems=[f"could not build the model for the LoRA table: {type(exc).__name__}: {exc}"])
    return CheckResult(True, data=summary)


def plan_memory(draft: ProfileDraft) -> CheckResult:
    """The memory estimate from `engine.memory.plan` (when this lora3d has it)."""
    from engine.memory.plan import plan_recipe  # lazy: the planner imports torch, only in the check workers

    try:
        plan = plan_recipe(draft.recipe(), hardware=draft.hardware)
    except Lora3dError as exc:
        return CheckResult(False, problems=_problem_lines(exc))
    except Exception as exc:
        return CheckResult(False, [f"memory estimate failed: {type(exc).__name__}: {exc}"])
    estimate = plan.estimate
    lines = [f"estimated peak: {format_bytes(estimate.estimate_bytes)}"
             + (f" of {format_bytes(plan.device_bytes)}" if getattr(plan, "device_bytes", None) else "")
             + (" - fits" if plan.fits else " - does NOT fit")]
    breakdown = getattr(estimate, "breakdown", None) or {}
    for key, value in list(breakdown.items())[:6]:
        lines.append(f"  {key}: {format_bytes(value) if isinstance(value, (int, float)) else value}")
    rec = getattr(plan, "recommendation", None)
    data: dict[str, Any] = {"fits": bool(plan.fits), "warnings": list(getattr(plan, "warnings", []) or [])}
    if rec is not None:
        data["recommendation"] = {k: getattr(rec, k, None) for k in
                                  ("rank", "micro_batch", "grad_accum", "gradient_checkpointing", "precision")}
        data["reasons"] = list(getattr(rec, "reasons", []) or [])
    return CheckResult(bool(plan.fits), lines, data=data)
