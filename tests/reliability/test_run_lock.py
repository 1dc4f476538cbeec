"""Promise: one training process per run directory. A second `lora3d train` (new run or `--resume`) into a
directory another process trains in exits 2 naming that process's pid and changes nothing; the lock dies
with its holder (no stale lock after a SIGKILL); `lora3d watch` reads a locked run without writing."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from engine.cli import main as cli_main
from engine.families.recipe import resolve_recipe
from engine.train.checkpoint import list_checkpoints
from engine.train.events import read_events
from engine.train.lock import LOCK_FILE, RunDirLockedError, RunLock, is_locked
from engine.train.trainer import Trainer, TrainerHooks, train
from engine.train.watch import watch_plain
from tests.conftest import REPO, toy_profile_dict


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _recipe(tmp_path, **train_keys):
    return resolve_recipe(toy_profile_dict(tmp_path, train={"max_steps": 4, **train_keys}))


def test_second_trainer_in_process_is_refused_and_changes_nothing(tmp_path, capsys):
    train(_recipe(tmp_path))
    run = tmp_path / "run"
    holder = RunLock(run)
    holder.acquire()  # stands in for a live trainer
    try:
        before = _digest(run)
        with pytest.raises(RunDirLockedError) as info:
            Trainer(_recipe(tmp_path), resume=True, install_signal_handlers=False).run()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and str(run) in message and "--out NEW_DIR" in message
        assert "lora3d watch" in message and "Free disk space" not in message
        assert _digest(run) == before  # no event appended, no checkpoint or temp folder touched
        # through the CLI: exit 2, one message, no traceback
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(toy_profile_dict(tmp_path, train={"max_steps": 4})))
        assert cli_main(["train", str(path), "--quiet", "--resume"]) == 2
        err = capsys.readouterr().err
        assert "is training in this run directory" in err and "Traceback" not in err
        assert _digest(run) == before
    finally:
        holder.release()
    assert not is_locked(run)
    assert train(_recipe(tmp_path), resume=True).status == "completed"  # released: resume works


def test_new_run_into_a_locked_empty_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run)
    holder.acquire()
    try:
        with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()}"):
            train(_recipe(tmp_path))
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # no events, no profile written
    finally:
        holder.release()


def test_lock_is_held_for_the_run_and_released_after(tmp_path):
    seen = []
    Trainer(_recipe(tmp_path), hooks=TrainerHooks(after_step=lambda t: seen.append(is_locked(t.run_dir))),
            install_signal_handlers=False).run()
    assert seen == [True] * 4 and not is_locked(tmp_path / "run")
    start = next(e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "start")
    assert start["lock"] == str(tmp_path / "run" / LOCK_FILE)


def test_watch_reads_a_locked_run_without_writing(tmp_path):
    train(_recipe(tmp_path))
    run = tmp_path / "run"
    holder = RunLock(run)
    holder.acquire()
    try:
        before = _digest(run)
        out = io.StringIO()
        state = watch_plain(run, out, follow_run=False)
        assert state.status == "completed" and "end: completed at step 4" in out.getvalue()
        assert _digest(run) == before and is_locked(run)
    finally:
        holder.release()


def test_other_process_holds_the_lock_until_it_dies(tmp_path, write_profile):
    """A real second process: `--resume` while it trains is refused with its pid and does not disturb it;
    after a SIGKILL the lock is gone with it and `--resume` continues from its newest checkpoint."""
    data = toy_profile_dict(tmp_path, train={"max_steps": 100000, "checkpoint_every": 1, "keep_last": 2},
                            data={"num_train": 4000})
    path = write_profile(data)
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "train", str(path), "--quiet"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list_checkpoints(run / "checkpoints"):
            time.sleep(0.1)
        assert list_checkpoints(run / "checkpoints"), "the first process never checkpointed"
        with pytest.raises(RunDirLockedError, match=f"pid {proc.pid}"):
            Trainer(resolve_recipe(data), resume=True, install_signal_handlers=False).run()
        assert proc.poll() is None  # the holder was not disturbed
        pids = {e.get("pid") for e in read_events(run / "events.jsonl") if e["type"] == "start"}
        assert pids == {proc.pid}  # only the holder wrote the log
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not is_locked(run)  # released by the operating system

    def stop_after_one(trainer):
        trainer.request_stop("test")

    result = Trainer(resolve_recipe(data), resume=True, hooks=TrainerHooks(after_step=stop_after_one),
                     install_signal_handlers=False).run()
    starts = [e for e in read_events(run / "events.jsonl") if e["type"] == "start"]
    assert starts[-1]["resumed_from"] is not None and result.status == "stopped"
    assert result.step == starts[-1]["start_step"] + 1
