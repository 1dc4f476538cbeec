"""Each family on 2 CPU processes (gloo) gives the adapter a single process gives at the same effective batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine.train.events import read_events
from tests.conftest import REPO
from tests.families.midi.midi_helpers import midi_env_fixture, midi_profile_dict  # noqa: F401 (fixture)
from tests.families.scenesplat.tiny_scenesplat import tiny_profile_data


def _train(profile: dict, path, launch: bool) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    cmd = [sys.executable, "-m", "engine", "train", str(path), "--quiet"] + (["--launch"] if launch else [])
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _same_run(tmp_path, single: dict, double: dict) -> None:
    single["output"]["dir"], double["output"]["dir"] = str(tmp_path / "single"), str(tmp_path / "double")
    r1 = _train(single, tmp_path / "single.yaml", launch=False)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _train(double, tmp_path / "double.yaml", launch=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "double" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    starts = [e for e in read_events(tmp_path / "double" / "events.jsonl") if e["type"] == "start"]
    assert len(starts) == 1 and starts[0]["num_processes"] == 2  # written once, by the main process


@pytest.mark.slow
def test_scenesplat_two_processes_match_one(tmp_path):
    common = {"data": {"synthetic_train": 4}, "lora": {"dropout": 0.0}}
    single = tiny_profile_data(tmp_path, train={"batch_size": 1, "grad_accum": 2, "max_steps": 2}, **common)
    double = tiny_profile_data(tmp_path, train={"batch_size": 1, "grad_accum": 1, "max_steps": 2},
                               launch={"num_processes": 2, "main_process_port": 29523}, **common)
    _same_run(tmp_path, single, double)


@pytest.mark.slow
def test_midi_two_processes_match_one(tmp_path, midi_env):
    single = midi_profile_dict(midi_env, tmp_path, train={"batch_size": 1, "grad_accum": 2, "max_steps": 2})
    double = midi_profile_dict(midi_env, tmp_path, train={"batch_size": 1, "grad_accum": 1, "max_steps": 2},
                               launch={"num_processes": 2, "main_process_port": 29527})
    single["data"]["cache_dir"] = str(tmp_path / "cache1")
    double["data"]["cache_dir"] = str(tmp_path / "cache2")
    _same_run(tmp_path, single, double)
