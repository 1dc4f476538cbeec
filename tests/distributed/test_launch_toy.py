"""Two CPU processes (gloo) through accelerate give the adapter a single process gives at the same effective batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from engine.families.recipe import resolve_recipe
from engine.launch import launch_command
from engine.train.events import read_events
from tests.conftest import REPO, toy_profile_dict


def _env():
    return dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def test_launch_command_composition(tmp_path):
    profile = resolve_recipe(toy_profile_dict(tmp_path, launch={"num_processes": 8, "num_machines": 2,
                                                                  "main_process_ip": "10.1.2.3"})).profile
    cmd = launch_command(profile, "p.yaml", ["lora.r=8"], out="runs/x", resume=True)
    joined = " ".join(cmd)
    assert "--num_processes 8 --num_machines 2 --machine_rank 0" in joined
    assert "--main_process_ip 10.1.2.3 --main_process_port 29500" in joined
    assert joined.endswith("-m engine train p.yaml --set lora.r=8 --out runs/x --resume")


def test_two_processes_match_one(tmp_path, write_profile):
    single = toy_profile_dict(tmp_path, train={"batch_size": 2, "grad_accum": 2, "max_steps": 4})
    single["output"]["dir"] = str(tmp_path / "single")
    double = toy_profile_dict(tmp_path, train={"batch_size": 2, "grad_accum": 1, "max_steps": 4},
                              launch={"num_processes": 2, "main_process_port": 29517})
    double["output"]["dir"] = str(tmp_path / "double")
    p1, p2 = write_profile(single, "single.yaml"), write_profile(double, "double.yaml")
    r1 = subprocess.run([sys.executable, "-m", "engine", "train", str(p1), "--quiet"], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([sys.executable, "-m", "engine", "train", str(p2), "--launch", "--quiet"], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "double" / "adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    events = read_events(tmp_path / "double" / "events.jsonl")
    starts = [e for e in events if e["type"] == "start"]
    assert len(starts) == 1  # written once, by the main process only
    assert starts[0]["num_processes"] == 2 and starts[0]["effective_batch"] == 4
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_resume_across_process_counts(tmp_path, write_profile):
    """2 processes for 2 steps, then 1 process with doubled accumulation for the rest."""
    base = toy_profile_dict(tmp_path, train={"batch_size": 2, "grad_accum": 1, "max_steps": 4, "checkpoint_every": 2},
                            launch={"num_processes": 2, "main_process_port": 29519})
    base["output"]["dir"] = str(tmp_path / "run")
    path = write_profile(base, "two.yaml")
    env = _env()
    stop_at_two = subprocess.run([sys.executable, "-m", "engine", "train", str(path), "--launch", "--quiet",
                                  "--set", "train.max_steps=2"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=300)
    assert stop_at_two.returncode == 0, stop_at_two.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "step-2").is_dir()
