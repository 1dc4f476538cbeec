"""Provides the `lora3d` commands that work on any family: data-check, plan, merge, demo.

Family-specific commands (importing splats, preparing meshes, generating scenes) live in the families'
folders and are listed by their entries (`engine.families.entry.CliCommand`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import stat
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from safetensors import SafetensorError

from engine.atomic import clean_stale_temporaries
from engine.errors import CheckpointError
from engine.families.recipe import load_recipe
from engine.families.registry import family_entries
from engine.lora.adapter_formats import read_folder_metadata
from engine.memory.estimate import GIB
from engine.memory.fingerprint import hardware_fingerprint
from engine.memory.hostram import check_host_ram
from engine.memory.plan import Plan, hardware_for_plan, plan_inference, plan_recipe
from engine.memory.probe import Candidate, correction_factor, probe_recipe
from engine.profile import read_yaml, save_profile_data
from engine.write_errors import write_error


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def cmd_data_check(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.profile, args.set)
    report = recipe.family.data_check(recipe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        report.render(_console())
    return 0 if not report.to_dict().get("problems") else 1


def run_recipe(run_dir: Path):
    """The recipe a run directory was trained with (its `profile.resolved.yaml`)."""
    resolved = run_dir / "profile.resolved.yaml"
    if not resolved.exists():
        raise CheckpointError(
            f"{run_dir}: not a lora3d run directory (no profile.resolved.yaml). Pass the folder `lora3d train` wrote."
        )
    return load_recipe(resolved)


RUN_OUTPUTS = ("adapter", "adapter-best", "checkpoints")
"""The folders of a run directory `lora3d merge` never writes into (nor replaces)."""


def check_merge_output(run_dir: Path, out: Path) -> None:
    """Refuses a `--out` that would overwrite what the merge reads or what the run keeps.

    Refused: a path inside (or equal to) the run's `adapter/`, `adapter-best/` or `checkpoints/`; the run
    directory or any folder holding it (a folder output replaces the folder); an existing path that is not a
    regular file or folder (a device such as /dev/full, a pipe).

    Raises:
        CheckpointError: naming `--out` and what it would overwrite.
    """
    target = out.resolve()
    run = run_dir.resolve()
    for name in RUN_OUTPUTS:
        protected = run / name
        if target == protected or protected in target.parents:
            raise CheckpointError(
                f"{out}: `--out` lies in the run's {name}/ folder, which the merge reads or the run keeps, got "
                f"{target}. Write the merged checkpoint elsewhere, e.g. `--out {run_dir / 'merged'}`."
            )
    if target == run or target in run.parents:
        raise CheckpointError(
            f"{out}: `--out` is the run directory or a folder holding it, got {target}; a folder output would "
            f"replace it. Name a new file or folder, e.g. `--out {run_dir / 'merged'}`."
        )
    if out.exists():
        mode = out.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise CheckpointError(
                f"{out}: `--out` is not a regular file or folder, got {stat.filemode(mode)} (a device or pipe). "
                "Name a file (.pth, .safetensors) or a folder."
            )


def cmd_merge(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    recipe = run_recipe(run_dir)
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise CheckpointError(f"{run_dir}: has no adapter/ yet (the run has not completed). Finish it with --resume first.")
    out = Path(args.out)
    check_merge_output(run_dir, out)
    console = _console()
    for folder in (out.parent, out) if out.is_dir() else (out.parent,):
        removed = clean_stale_temporaries(folder, None if folder == out else out.name)
        for path in removed:
            console.print(f"note: removed {path}, a temporary file an interrupted merge left")
    user = read_folder_metadata(adapter).get("user") or {}
    if user.get("partial"):
        console.print(f"[yellow]note:[/] {escape(str(adapter))} is a stopped run's adapter (step {user.get('step')} of "
                      f"{user.get('total_steps')}); the merged checkpoint is of that step. "
                      f"Finish the run with `lora3d train ... --resume` and merge again for the full training.")
    try:
        written = recipe.family.merge_adapter(recipe, adapter, out, bare=args.bare)
    except (OSError, SafetensorError) as exc:
        # safetensors reports a full disk as SafetensorError, not OSError; the atomic writers removed their
        # temporaries, so nothing partial is left.
        raise write_error(out, exc, "the merged checkpoint cannot be written, nothing was written",
                          elsewhere="merge to another `--out`",
                          more_space="Free disk space (a merged checkpoint is as large as the base) or merge to "
                          "another `--out`") from None
    console.print(f"merged checkpoint written to {written}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    entry = family_entries()[args.family]
    module, function = entry.demo.split(":")
    run_demo = getattr(importlib.import_module(module), function)
    run_demo(Path(args.out) if args.out else None, console=_console())
    return 0


def _fmt(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f} GB"


def _candidates(profile: Any, plan: Plan) -> list[Candidate]:
    rec = plan.recommendation
    top = Candidate(rec.rank, rec.micro_batch, rec.gradient_checkpointing, rec.precision)
    own = Candidate(profile.lora.r, profile.train.batch_size, profile.train.gradient_checkpointing,
                    profile.train.mixed_precision)
    return [top] if own == top else [top, own]


def write_measured(path: Path, measured: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Writes `hardware.measured` (and the fingerprint) into the profile file atomically; comments are lost."""
    data = read_yaml(path)
    hardware = dict(data.get("hardware") or fingerprint)
    hardware["measured"] = measured
    data["hardware"] = hardware
    save_profile_data(data, path)


def cmd_plan(args: argparse.Namespace) -> int:
    """`lora3d plan PROFILE [--json] [--measure [--write]]`."""
    recipe = load_recipe(args.profile, args.set)
    profile = recipe.profile
    hardware = hardware_for_plan()
    if getattr(args, "inference", False):
        return _plan_inference(args, recipe, hardware)
    plan = plan_recipe(recipe, hardware)
    plan.warnings.extend(check_host_ram(recipe, hardware))
    measurements = []
    measured_record = None
    if getattr(args, "measure", False):
        measurements = probe_recipe(recipe, _candidates(profile, plan), plan.device)
        factor = correction_factor(measurements)
        if factor is not None:
            measured_record = {
                "family": profile.model.family,
                "device": plan.device,
                "device_name": None if hardware.cpu_mode else min(hardware.gpus, key=lambda g: g.total_bytes).name,
                "correction": factor,
                "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "candidates": [m.to_dict() for m in measurements],
            }
            if getattr(args, "write", False):
                fingerprint = hardware_fingerprint(hardware).model_dump(mode="json")
                write_measured(Path(args.profile), measured_record, fingerprint)
    if args.json:
        out = plan.to_dict()
        if getattr(args, "measure", False):
            out["measured"] = [m.to_dict() for m in measurements]
            out["correction_factor"] = measured_record["correction"] if measured_record else None
            out["written"] = bool(measured_record and getattr(args, "write", False))
        print(json.dumps(out, indent=2))
        return 0
    _print_plan(profile, plan, measurements, measured_record, getattr(args, "write", False))
    return 0


def _plan_inference(args: argparse.Namespace, recipe: Any, hardware: Any) -> int:
    """`lora3d plan PROFILE --inference [--scene-points N] [--memory-gb GB] [--json]`."""
    budget_bytes = int(args.memory_gb * GIB) if args.memory_gb else None
    budget = plan_inference(recipe, hardware, args.scene_points, budget_bytes)
    if args.json:
        print(json.dumps(budget.to_dict(), indent=2))
        return 0
    console = _console()
    scene = f", scene of {budget.scene_tokens} points" if budget.scene_tokens else ""
    table = Table(title=f"inference memory: {recipe.profile.model.family}, {budget.max_tokens} points per forward "
                  f"pass ({budget.device}{scene})")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    labels = {"expected": "one forward pass, peak", "scene": "scene buffers (host)"}
    for key, value in budget.parts.items():
        table.add_row(labels.get(key, key), _fmt(value))
    table.add_row("needed" + (" (forward + scene buffers)" if budget.device == "cpu" else " (on the GPU)"),
                  _fmt(budget.expected_bytes))
    table.add_row("[bold]with 10% margin[/]", f"[bold]{_fmt(budget.estimate_bytes)}[/]")
    console.print(table)
    verdict = "[green]fits[/]" if budget.fits else "[red]does not fit[/]"
    whole = budget.scene_tokens is not None and budget.max_tokens >= budget.scene_tokens
    console.print(f"verdict: {verdict} in {_fmt(budget.budget_bytes)}; "
                  + ("the scene runs whole" if whole else f"forward passes of at most {budget.max_tokens} points "
                     "(larger scenes run in chunks)"))
    for note in budget.notes:
        console.print(f"  note: {escape(note)}")
    return 0


def _print_plan(profile: Any, plan: Plan, measurements: list[Any], measured: dict[str, Any] | None,
                written: bool) -> None:
    console = _console()
    est = plan.estimate
    table = Table(title=f"memory estimate: {profile.model.family}, {est.tokens} tokens per micro-batch ({plan.device})")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    for key, value in est.breakdown.items():
        table.add_row(key, _fmt(value))
    table.add_row("expected peak", _fmt(est.expected_bytes))
    table.add_row("[bold]with 10% margin[/]", f"[bold]{_fmt(est.estimate_bytes)}[/]")
    console.print(table)
    for note in est.notes:
        console.print(f"  note: {escape(note)}")
    where = f"GPU {_fmt(plan.device_bytes)}" if plan.device_bytes else f"CPU, host RAM budget {_fmt(plan.budget_bytes)}"
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    console.print(f"verdict: {verdict} ({_fmt(est.estimate_bytes)} on {where})")
    rec = plan.recommendation
    console.print(
        f"recommendation ({rec.tier}): rank {rec.rank}, micro-batch {rec.micro_batch} x grad_accum {rec.grad_accum} "
        f"x {profile.launch.num_processes} process(es) = effective batch {profile.effective_batch}, gradient "
        f"checkpointing {'on' if rec.gradient_checkpointing else 'off'}, precision {rec.precision}: "
        f"{_fmt(rec.estimate_bytes)}{'' if rec.fits else ' [red](does not fit)[/]'}"
    )
    for reason in rec.reasons:
        console.print(f"  - {escape(reason)}")
    console.print(f"  apply with: --set {' '.join(rec.overrides())}")
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if measurements:
        mt = Table(title="measured vs estimated (expected peak, no margin)")
        for col in ("rank", "micro-batch", "ckpt", "precision", "estimated", "measured", "ratio est/meas"):
            mt.add_column(col)
        for m in measurements:
            c = m.candidate
            mt.add_row(str(c.rank), str(c.micro_batch), "on" if c.gradient_checkpointing else "off", c.precision,
                       _fmt(m.estimated_bytes), _fmt(m.measured_bytes) if m.measured_bytes else escape(m.error or "n/a"),
                       f"{m.ratio:.2f}" if m.ratio else "-")
        console.print(mt)
        if measured:
            console.print(f"correction factor (measured / estimated, worst case): {measured['correction']:.3f}"
                          + (" written to `hardware.measured`" if written else "; add --write to store it"))
