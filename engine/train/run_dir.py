"""Provides the run directory's set-up: refusals before anything is written, clean-up of a killed run's
leftovers, and `profile.resolved.yaml` (the recipe written out with the state's micro-batch split)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ProfileError
from engine.families.base import Recipe
from engine.profile import save_profile_data
from engine.train.checkpoint import clean_partial, list_checkpoints
from engine.train.state import TrainState

RESOLVED_PROFILE = "profile.resolved.yaml"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuses a run directory that is a file, or holds checkpoints without --resume; writes nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ProfileError(
            f"{run_dir}: `output.dir` names an existing file, not a folder. Choose another run directory "
            "(`--out NEW_DIR`); the file was left untouched."
        )
    existing = list_checkpoints(run_dir / "checkpoints")
    if existing and not resume:
        raise ProfileError(
            f"{run_dir}: this run directory already holds checkpoints ({existing[-1].name}). "
            "Pass --resume to continue it, or --out NEW_DIR (or `output.dir`) for a new run; nothing was changed."
        )


def prepare_run_dir(run_dir: Path) -> None:
    """Creates the run directory and removes what a killed save left behind."""
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir / "checkpoints")


def write_resolved_profile(recipe: Recipe, run_dir: Path, state: TrainState | None = None) -> None:
    """The recipe written out, with the state's micro-batch split (after OOM recovery or a resume)."""
    data = recipe.profile.to_yaml_dict()
    if state is not None:
        data["train"].update(batch_size=state.micro_batch, grad_accum=state.grad_accum)
    save_profile_data(
        data,
        run_dir / RESOLVED_PROFILE,
        header="The profile this run actually used (overrides and run-time changes applied).\n"
        f"Rerun: lora3d train {run_dir / RESOLVED_PROFILE} --out NEW_DIR",
    )
