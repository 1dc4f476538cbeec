"""Provides the run directory's set-up: refusals before anything is written, the lock, clean-up of a killed
run's leftovers, and `profile.resolved.yaml` (the recipe written out with the state's micro-batch split)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ProfileError
from engine.families.base import Recipe
from engine.profile import save_profile_data
from engine.train.checkpoint import Cleanup, clean_partial, list_checkpoints, resume_advice
from engine.train.lock import RunLock, is_locked, lock_owner
from engine.train.saving import tidy_adapter_leftovers
from engine.train.state import TrainState
from engine.write_errors import TRAIN_ELSEWHERE, write_error

RESOLVED_PROFILE = "profile.resolved.yaml"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuses a run directory that is empty, a file, or holds checkpoints without --resume; writes nothing."""
    if str(run_dir) in ("", "."):
        raise ProfileError(
            f"`output.dir` is empty, got {str(run_dir)!r}: the run would be written into the current folder. Name a "
            "run directory: `output.dir: runs/my-run` in the profile, or --out runs/my-run."
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise ProfileError(
            f"{run_dir}: `output.dir` names an existing file, not a folder. Choose another run directory "
            "(`--out NEW_DIR`); the file was left untouched."
        )
    existing = list_checkpoints(run_dir / "checkpoints")
    if existing and not resume:
        busy = ""
        if is_locked(run_dir):
            pid = (lock_owner(run_dir) or {}).get("pid")
            busy = f" (and another process{f', pid {pid},' if isinstance(pid, int) else ''} is training in it now)"
        raise ProfileError(
            f"{run_dir}: this run directory already holds checkpoints ({existing[-1].name}){busy}. "
            "Pass --resume to continue it, or --out NEW_DIR (or `output.dir`) for a new run; nothing was changed."
        )


def prepare_run_dir(run_dir: Path) -> tuple[RunLock, Cleanup]:
    """Creates the run directory, takes its lock (held until `RunLock.release`) and tidies what a killed
    save left behind.

    Raises:
        RunDirLockedError: another process trains in this run directory.
        CheckpointError: the folder cannot be created or written (read-only, full disk).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run_dir, exc, "the run directory could not be created", then="then rerun",
                          elsewhere=TRAIN_ELSEWHERE) from None
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        cleanup = clean_partial(run_dir / "checkpoints")
        cleanup.recovered.extend(tidy_adapter_leftovers(run_dir))
    except OSError as exc:
        lock.release()
        raise write_error(run_dir / "checkpoints", exc, "a killed run's leftovers could not be tidied",
                          then="then rerun", elsewhere=TRAIN_ELSEWHERE) from None
    return lock, cleanup


def write_resolved_profile(recipe: Recipe, run_dir: Path, state: TrainState | None = None) -> None:
    """The recipe written out, with the state's micro-batch split (after OOM recovery or a resume)."""
    data = recipe.profile.to_yaml_dict()
    if state is not None:
        data["train"].update(batch_size=state.micro_batch, grad_accum=state.grad_accum)
    path = run_dir / RESOLVED_PROFILE
    try:
        save_profile_data(
            data,
            path,
            header="The profile this run actually used (overrides and run-time changes applied).\n"
            f"Rerun: lora3d train {path} --out NEW_DIR",
        )
    except OSError as exc:
        raise write_error(path, exc, "could not be written", then=resume_advice(run_dir / "checkpoints"),
                          elsewhere=TRAIN_ELSEWHERE) from None
