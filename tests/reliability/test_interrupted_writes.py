"""Deterministic versions of the soak's worst moments: a process killed inside a prune or a re-save."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

from engine.families.recipe import resolve_recipe
from engine.train import checkpoint as ckpt_mod
from engine.train.checkpoint import list_checkpoints
from engine.train.events import read_events
from engine.train.trainer import train
from tests.conftest import toy_profile_dict


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not an Exception, so no handler swallows it)."""


def _half_rmtree(path, ignore_errors=False):
    """Deleting a checkpoint folder: removes one of its files, then the process 'dies'."""
    path = Path(path)
    if not path.exists() or path.name.startswith(".tmp-step-"):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    files = sorted(p for p in path.iterdir() if p.is_file())
    files[0].unlink()
    raise Killed(str(path))


def _profile(tmp_path, **train):
    data = toy_profile_dict(tmp_path, train={"max_steps": 6, "checkpoint_every": 1, "keep_last": 2, **train})
    return resolve_recipe(data)


def _step_folders(root):
    return sorted(p for p in root.iterdir() if p.name.startswith("step-"))


def test_kill_during_prune_leaves_no_half_deleted_step_folder(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(**{**vars(shutil), "rmtree": _half_rmtree})
    monkeypatch.setattr(ckpt_mod, "shutil", fake)
    with pytest.raises(Killed):
        train(_profile(tmp_path))  # the first prune (after step-3) is interrupted
    root = tmp_path / "run" / "checkpoints"
    # every step-N folder that exists is complete; the half-deleted one is a .tmp- folder
    assert [p.name for p in _step_folders(root)] == [p.name for p in list_checkpoints(root)] == ["step-2", "step-3"]
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")] == [".tmp-prune-step-1"]
    monkeypatch.setattr(ckpt_mod, "shutil", shutil)
    result = train(_profile(tmp_path), resume=True)
    assert result.status == "completed"
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
    assert [p.name for p in _step_folders(root)] == ["step-5", "step-6"]
    starts = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "start"]
    assert starts[-1]["resumed_from"] == "step-3"


def test_kill_during_resave_of_same_step_leaves_no_half_step_folder(tmp_path, monkeypatch):
    # a SAVE request and the final checkpoint hit the same step: the second save replaces the first
    train(_profile(tmp_path, max_steps=2, checkpoint_every=None))
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-2"]
    state = ckpt_mod.load_checkpoint(root / "step-2")
    fake = types.SimpleNamespace(**{**vars(shutil), "rmtree": _half_rmtree})
    monkeypatch.setattr(ckpt_mod, "shutil", fake)
    with pytest.raises(Killed):
        ckpt_mod.save_checkpoint(root, state.state, state.trainable, state.optimizer_state, state.scheduler_state,
                                 state.identity)
    for folder in _step_folders(root):
        assert (folder / ckpt_mod.MANIFEST).is_file(), folder
