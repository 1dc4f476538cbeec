"""Promise: a stopped run (SIGTERM, Ctrl-C, a STOP file) saves a checkpoint and the adapter of its last step,
marked partial in the adapter's metadata and in the `end` event, and exits 3 so that a batch system sees an
unfinished job; `--resume` continues it to the same adapter an uninterrupted run writes, then marked complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from engine.cli import main as cli_main
from engine.families.recipe import resolve_recipe
from engine.train.events import read_events
from engine.train.trainer import Trainer, TrainerHooks, train
from tests.conftest import REPO, toy_profile_dict


def _meta(run):
    return json.loads((run / "adapter" / "lora3d_metadata.json").read_text())["user"]


def _weights(run):
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_stop_file_writes_a_partial_adapter_and_resume_completes_it(tmp_path):
    straight = train(resolve_recipe(toy_profile_dict(tmp_path / "a")))

    def stop_file_at_3(trainer):
        if trainer.state.step == 3:
            (trainer.run_dir / "STOP").touch()

    run = tmp_path / "b" / "run"
    stopped = Trainer(resolve_recipe(toy_profile_dict(tmp_path / "b")), hooks=TrainerHooks(after_step=stop_file_at_3),
                      install_signal_handlers=False).run()
    assert stopped.status == "stopped" and stopped.step == 3
    meta = _meta(run)
    assert meta["partial"] is True and meta["step"] == 3 and meta["total_steps"] == 6
    end = read_events(run / "events.jsonl")[-1]
    assert end["type"] == "end" and end["status"] == "stopped" and end["partial"] is True
    assert end["adapter"] == str(run / "adapter") and not (run / "STOP").exists()
    # the partial adapter is the weights of step 3, loadable like any adapter
    resumed = train(resolve_recipe(toy_profile_dict(tmp_path / "b")), resume=True)
    assert resumed.status == "completed" and resumed.losses == pytest.approx(straight.losses[3:], abs=1e-6)
    assert _meta(run)["partial"] is False and read_events(run / "events.jsonl")[-1]["partial"] is False
    a, b = _weights(tmp_path / "a" / "run"), _weights(run)
    assert a.keys() == b.keys() and all(float((a[k] - b[k]).abs().max()) == 0.0 for k in a)


def test_cli_exit_code_3_for_a_stopped_run(tmp_path, monkeypatch, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(toy_profile_dict(tmp_path), sort_keys=False))
    real_run = Trainer.run

    def run_and_stop(self):
        self.hooks = TrainerHooks(after_step=lambda t: t.request_stop("SIGTERM") if t.state.step == 2 else None)
        return real_run(self)

    monkeypatch.setattr(Trainer, "run", run_and_stop)
    assert cli_main(["train", str(path), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "stopped at step 2" in err and "partial adapter" in err and "--resume" in err and "Traceback" not in err
    # merging the stopped run's adapter says it is partial (the toy family then refuses: it writes no merge)
    assert cli_main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 2
    out = capsys.readouterr()
    assert "a stopped run's adapter (step 2 of 6)" in out.out + out.err and "--resume" in out.out + out.err
    monkeypatch.setattr(Trainer, "run", real_run)
    assert cli_main(["train", str(tmp_path / "run" / "profile.resolved.yaml"), "--quiet", "--resume"]) == 0


@pytest.mark.slow
def test_sigterm_of_a_real_process_then_resume(tmp_path, write_profile):
    """The real signal, in a real process: exit 3, partial adapter; `--resume` in a new process completes."""
    data = toy_profile_dict(tmp_path, train={"max_steps": 400, "checkpoint_every": None}, data={"num_train": 4000})
    path = write_profile(data)
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "engine", "train", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events_path = tmp_path / "run" / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (events_path.exists() and any(
            e["type"] == "step" for e in read_events(events_path))):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert _meta(tmp_path / "run")["partial"] is True
    done = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _meta(tmp_path / "run")["partial"] is False and _meta(tmp_path / "run")["step"] == 400
