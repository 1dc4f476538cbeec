"""The CLI: validate / dry-run / train exit codes and messages, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from engine.train.events import read_events
from tests.conftest import REPO, toy_profile_dict


def _run(*args, timeout=180):
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_validate_prints_resolved_profile(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path))
    out = _run("validate", path, "--set", "lora.r=16")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["lora"]["r"] == 16 and resolved["train"]["weight_decay"] == 0.01  # defaults filled in
    assert "is valid" in out.stderr


def test_validate_bad_profile_exit_2(tmp_path, write_profile):
    data = toy_profile_dict(tmp_path)
    data["lora"]["rnak"] = 3
    out = _run("validate", write_profile(data))
    assert out.returncode == 2
    assert "unknown key `lora.rnak`. Did you mean `lora.r`?" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_dry_run_writes_nothing(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path))
    out = _run("train", path, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["model"]["family"] == "toy"
    assert not (tmp_path / "run").exists()


def test_train_two_steps_and_refusals(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path, train={"max_steps": 2}))
    out = _run("train", path, "--quiet")
    assert out.returncode == 0, out.stderr
    losses = [e["loss"] for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "step"]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    # training again into the same directory without --resume: refused, nothing changed
    again = _run("train", path, "--quiet")
    assert again.returncode == 2 and "Pass --resume" in again.stderr and "Traceback" not in again.stderr
    # fp16 on a CPU: refused with the fix
    fp16 = _run("train", path, "--quiet", "--out", tmp_path / "fp16", "--set", "train.mixed_precision=fp16",
                "train.device=cpu")
    assert fp16.returncode == 2 and "fp16 needs a CUDA GPU" in fp16.stderr


def test_plain_log_lines_when_not_a_tty(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path, train={"max_steps": 2}))
    out = _run("train", path)
    assert out.returncode == 0, out.stderr
    assert "step 1/2 loss" in out.stderr and "step 2/2 loss" in out.stderr
    assert "run completed" in out.stderr


def test_missing_profile_exit_2(tmp_path):
    out = _run("train", tmp_path / "nope.yaml")
    assert out.returncode == 2 and "profile not found" in out.stderr and "Traceback" not in out.stderr


def test_bad_plugin_module_is_a_clear_error(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path))
    env = dict(os.environ, LORA3D_PLUGINS="no_such_plugin_module")
    out = subprocess.run([sys.executable, "-m", "engine", "validate", str(path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "LORA3D_PLUGINS" in out.stderr and "no_such_plugin_module" in out.stderr
    assert "Traceback" not in out.stderr
