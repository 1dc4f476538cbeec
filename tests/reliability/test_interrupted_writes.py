"""Promise: a kill never costs a complete checkpoint. Deterministic versions of the soak's worst moments: a
process killed inside a prune, a re-save, at every write/rename/delete of a save sequence, or in the stop's
adapter write after a checkpoint."""

from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.families.recipe import resolve_recipe
from engine.train import checkpoint as ckpt_mod
from engine.train.checkpoint import list_checkpoints
from engine.train.events import read_events
from engine.train.trainer import Trainer, TrainerHooks, train
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


# ---------------------------------------------------------------------- a kill at every instant of a re-save
def _save(root, step, best=None):
    state = ckpt_mod.TrainState(step=step, epoch=0, epoch_sample=step * 4, micro_batch=2, grad_accum=2,
                                best_metric=best)
    trainable = {"w": torch.full((4,), float(step)), "b": torch.arange(3.0)}
    optimizer = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(4)}},
                 "param_groups": [{"lr": 0.1, "params": [0]}]}
    return ckpt_mod.save_checkpoint(root, state, trainable, optimizer, {"last_epoch": step}, {"family": "toy"})


class _Killer:
    """Counts the writes, renames and deletes of a save; at operation `at` the process 'dies' (Killed)."""

    def __init__(self, monkeypatch, at):
        self.at, self.n, self.log = at, 0, []
        real_rename, real_rmtree = os.rename, shutil.rmtree
        real_tensors, real_json = ckpt_mod._save_tensors, ckpt_mod._write_json

        def op(name, path):
            self.n += 1
            self.log.append((name, str(path)))
            return self.n == self.at

        def rename(src, dst, *a, **k):
            if op("rename", dst):
                raise Killed(f"before rename {src} -> {dst}")
            return real_rename(src, dst, *a, **k)

        def rmtree(path, ignore_errors=False, **k):
            if op("rmtree", path):
                files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []
                if files:
                    files[0].unlink()  # a delete that got one file in
                raise Killed(f"inside rmtree {path}")
            return real_rmtree(path, ignore_errors=ignore_errors, **k)

        def tensors(t, path):
            if op("write", path):
                path.write_bytes(b"\0" * 7)  # a torn file
                raise Killed(f"inside write {path}")
            return real_tensors(t, path)

        def write_json(path, data):
            if op("write", path):
                path.write_text('{"torn"')
                raise Killed(f"inside write {path}")
            return real_json(path, data)

        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(ckpt_mod.shutil, "rmtree", rmtree)
        monkeypatch.setattr(ckpt_mod, "_save_tensors", tensors)
        monkeypatch.setattr(ckpt_mod, "_write_json", write_json)

    def published(self, name):
        """Whether the rename that put checkpoint folder `name` in place ran before the kill."""
        return any(kind == "rename" and Path(dst).name == name for kind, dst in self.log[: self.at - 1])


def _sequence(root):
    """A scheduled save of step 3 and its prune, then a re-save of step 3 with a new best metric (a SAVE
    request and the stop at the same step), and its prune."""
    _save(root, 3)
    ckpt_mod.prune_checkpoints(root, 2)
    _save(root, 3, best=0.5)
    ckpt_mod.prune_checkpoints(root, 2)


def _count_operations(tmp_path, monkeypatch):
    root = tmp_path / "count"
    _save(root, 1), _save(root, 2)
    with monkeypatch.context() as m:
        killer = _Killer(m, at=0)
        _sequence(root)
    return killer.n


def test_a_kill_at_every_operation_keeps_the_newest_complete_step(tmp_path, monkeypatch):
    """Promise: at every instant a complete checkpoint of the newest step that was ever complete survives,
    and tidying after the kill never deletes it (the stop-then-kill window of issue 14 item 2 included)."""
    total = _count_operations(tmp_path, monkeypatch)
    assert total >= 20  # writes, renames and deletes of two saves and two prunes
    for at in range(1, total + 1):
        root = tmp_path / f"kill-{at}"
        _save(root, 1), _save(root, 2)
        with monkeypatch.context() as m:
            killer = _Killer(m, at)
            with pytest.raises(Killed):
                _sequence(root)
        newest_ever = 3 if killer.published("step-3") else 2
        # right after the kill, before any tidying: resume would find step `newest_ever` (or newer)
        found = [p.name for p in list_checkpoints(root)]
        assert found and int(found[-1].split("-")[1].split(".")[0]) >= newest_ever, (at, killer.log[at - 1], found)
        # every step-* folder is complete (half-deleted ones carry a .tmp- name)
        for folder in root.iterdir():
            if folder.name.startswith("step-"):
                assert (folder / ckpt_mod.MANIFEST).is_file(), (at, folder.name)
        cleanup = ckpt_mod.clean_partial(root)
        after = list_checkpoints(root)
        assert after and int(after[-1].name.split("-")[1].split(".")[0]) >= newest_ever, (at, cleanup)
        assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
        loaded = ckpt_mod.load_checkpoint(after[-1])  # and it reads back
        assert float(loaded.trainable["w"][0]) == loaded.state.step


def test_clean_partial_recovers_what_the_old_resave_left(tmp_path):
    """The window issue 14 item 2 reported: the old code renamed step-N away before moving the new one in; a
    kill then left `.tmp-old-step-N` (complete) and a torn `.tmp-step-N`. Tidying recovers step-N."""
    root = tmp_path / "ckpt"
    _save(root, 2)
    step5 = _save(root, 5)
    step5.rename(root / ".tmp-old-step-5")
    (root / ".tmp-step-5").mkdir()
    (root / ".tmp-step-5" / "trainable.safetensors").write_bytes(b"torn")
    assert [p.name for p in list_checkpoints(root)] == ["step-2"]
    cleanup = ckpt_mod.clean_partial(root)
    assert [p.name for p in cleanup.recovered] == ["step-5"]
    assert [p.name for p in list_checkpoints(root)] == ["step-2", "step-5"]
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-5"]


def test_clean_partial_promotes_a_complete_unrenamed_save(tmp_path):
    root = tmp_path / "ckpt"
    _save(root, 1)
    _save(root, 2).rename(root / ".tmp-step-2")  # killed between the manifest and the rename
    cleanup = ckpt_mod.clean_partial(root)
    assert [p.name for p in cleanup.recovered] == ["step-2"] and not cleanup.removed
    assert [p.name for p in list_checkpoints(root)] == ["step-1", "step-2"]


def test_resave_of_a_step_gets_a_new_name_then_replaces_the_old(tmp_path):
    root = tmp_path / "ckpt"
    first = _save(root, 3)
    second = _save(root, 3, best=0.25)
    assert (first.name, second.name) == ("step-3", "step-3.1")
    assert [p.name for p in list_checkpoints(root)] == ["step-3.1"]
    assert sorted(p.name for p in root.iterdir()) == ["step-3.1"]
    assert ckpt_mod.load_checkpoint(second).state.best_metric == 0.25


def test_stop_then_kill_during_the_partial_adapter_resumes_exactly(tmp_path, monkeypatch):
    """SIGTERM right after a scheduled checkpoint, then SIGKILL while the stop writes its partial adapter:
    `--resume` continues from that step and ends with the uninterrupted run's adapter."""
    from tests.toy_family import ToyFamily

    straight = train(_profile(tmp_path / "a", max_steps=6, checkpoint_every=2))
    real = ToyFamily.save_adapter

    def killed_in_partial_adapter(self, model, folder, metadata):
        if metadata.get("partial"):
            (folder / "adapter_model.safetensors").parent.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_model.safetensors").write_bytes(b"torn")
            raise Killed("SIGKILL during the stop's adapter write")
        real(self, model, folder, metadata)

    def sigterm_at_4(trainer):
        if trainer.state.step == 4:
            trainer.request_stop("SIGTERM")

    monkeypatch.setattr(ToyFamily, "save_adapter", killed_in_partial_adapter)
    recipe = _profile(tmp_path / "b", max_steps=6, checkpoint_every=2)
    with pytest.raises(Killed):
        Trainer(recipe, hooks=TrainerHooks(after_step=sigterm_at_4), install_signal_handlers=False).run()
    run = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-4"
    assert not (run / "adapter").exists()  # the staged adapter never replaced anything
    monkeypatch.setattr(ToyFamily, "save_adapter", real)
    resumed = train(_profile(tmp_path / "b", max_steps=6, checkpoint_every=2), resume=True)
    assert resumed.status == "completed" and resumed.losses == pytest.approx(straight.losses[4:], abs=1e-6)
    assert not list(run.glob(".adapter*"))
    a = load_file(str(tmp_path / "a" / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
