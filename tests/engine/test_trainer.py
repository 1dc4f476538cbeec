"""Trainer behaviour on the toy family: resume equivalence, refusals, atomic checkpoints, guards, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import CheckpointError, HardwareError, ProfileError
from engine.families.recipe import resolve_recipe
from engine.train import checkpoint as ckpt_mod
from engine.train.checkpoint import list_checkpoints
from engine.train.events import read_events
from engine.train.guards import DivergenceError, GradientFlowError
from engine.train.trainer import Trainer, TrainerHooks, train
from tests.conftest import REPO, toy_profile_dict


def _profile(tmp_path, name="run", **sections):
    data = toy_profile_dict(tmp_path, **sections)
    data["output"]["dir"] = str(tmp_path / name)
    return resolve_recipe(data)


def _lora_weights(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


def test_run_writes_run_directory(tmp_path):
    result = train(_profile(tmp_path))
    run = tmp_path / "run"
    assert result.status == "completed" and result.step == 6
    assert (run / "profile.resolved.yaml").exists()
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "adapter-best").is_dir()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2", "step-4", "step-6"]
    events = read_events(run / "events.jsonl")
    types = [e["type"] for e in events]
    assert types[-1] == "end" and events[-1]["status"] == "completed"
    assert set(types[: types.index("start")]) == {"info"}  # only progress notes precede the start event
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "time", "memory_bytes"} <= set(e) for e in steps)
    assert steps[0]["lr"] == pytest.approx(0.05 / 2)  # warm-up step 1 of 1
    assert any(e["type"] == "eval" for e in events)
    assert result.losses[-1] < result.losses[0] * 1.5  # it trains (toy task, few steps)


def test_resume_gives_same_weights_as_straight_run(tmp_path):
    straight = train(_profile(tmp_path, "straight"))

    def interrupt_at_3(trainer):  # as a Ctrl-C after step 3 would
        if trainer.state.step == 3:
            trainer.stop_reason = "SIGINT"

    first = Trainer(_profile(tmp_path, "halves"), hooks=TrainerHooks(after_step=interrupt_at_3)).run()
    assert first.status == "stopped" and first.step == 3
    resumed = train(_profile(tmp_path, "halves"), resume=True)
    assert resumed.step == straight.step == 6
    _assert_same_weights(_lora_weights(tmp_path / "straight"), _lora_weights(tmp_path / "halves"))
    # the resumed loss curve continues the uninterrupted one
    assert resumed.losses == pytest.approx(straight.losses[3:], abs=1e-6)
    starts = [e for e in read_events(tmp_path / "halves" / "events.jsonl") if e["type"] == "start"]
    assert starts[-1]["resumed_from"] == "step-3"


def test_resume_refuses_other_lora_config(tmp_path):
    train(_profile(tmp_path, train={"max_steps": 2}))
    with pytest.raises(CheckpointError) as info:
        Trainer(_profile(tmp_path, lora={"r": 8}), resume=True).run()
    message = str(info.value)
    assert "different setup" in message and "lora.r: checkpoint 4, this run 8" in message


def test_existing_run_dir_needs_resume_flag(tmp_path):
    train(_profile(tmp_path, train={"max_steps": 2}))
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(ProfileError, match="Pass --resume"):
        train(_profile(tmp_path, train={"max_steps": 2}))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    real = ckpt_mod._write_json
    calls = {"n": 0}

    def dying_write(path, data):
        if path.name == "checkpoint.json" and "step-4" in str(path.parent):
            raise KeyboardInterrupt("killed mid-save")
        calls["n"] += 1
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        train(_profile(tmp_path))
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-2"]
    assert (root / ".tmp-step-4").exists()  # what a kill leaves behind, never picked up
    monkeypatch.setattr(ckpt_mod, "_write_json", real)
    result = train(_profile(tmp_path), resume=True)
    assert result.status == "completed"
    assert not (root / ".tmp-step-4").exists()
    starts = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "start"]
    assert starts[-1]["resumed_from"] == "step-2"


def test_disk_full_during_checkpoint(tmp_path, monkeypatch):
    real = ckpt_mod._save_tensors

    def full(tensors, path):
        if "step-4" in str(path.parent):
            raise OSError(28, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(ckpt_mod, "_save_tensors", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        train(_profile(tmp_path))
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-2"]
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())
    assert read_events(tmp_path / "run" / "events.jsonl")[-1]["status"] == "failed"


def test_nan_loss_stops_without_nan_adapter(tmp_path):
    profile = _profile(tmp_path, model={"nan_at_step": 4})
    with pytest.raises(DivergenceError, match="loss became nan at step 4"):
        train(profile)
    run = tmp_path / "run"
    assert not (run / "adapter").exists()
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert newest.name == "step-2"
    assert all(torch.isfinite(t).all() for t in load_file(str(newest / "trainable.safetensors")).values())
    end = read_events(run / "events.jsonl")[-1]
    assert end["type"] == "end" and end["status"] == "failed"


def test_gradient_flow_guard_names_modules(tmp_path):
    with pytest.raises(GradientFlowError, match="spare.proj"):
        train(_profile(tmp_path, model={"unused_block": True}))


def test_fp16_on_cpu_refused(tmp_path):
    with pytest.raises(HardwareError, match="fp16 needs a CUDA GPU"):
        train(_profile(tmp_path, train={"mixed_precision": "fp16", "device": "cpu"}))


def test_bf16_on_cpu_runs(tmp_path):
    result = train(_profile(tmp_path, train={"mixed_precision": "bf16", "max_steps": 2}))
    assert result.status == "completed"


def test_stop_and_save_files(tmp_path):
    profile = _profile(tmp_path, train={"max_steps": 6, "checkpoint_every": None})

    def drop_files(trainer):
        if trainer.state.step == 1:
            (trainer.run_dir / "SAVE").touch()
        if trainer.state.step == 3:
            (trainer.run_dir / "STOP").touch()

    result = Trainer(profile, hooks=TrainerHooks(after_step=drop_files)).run()
    run = tmp_path / "run"
    assert result.status == "stopped" and result.step == 3
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-1", "step-3"]
    assert not (run / "STOP").exists() and not (run / "SAVE").exists()
    assert read_events(run / "events.jsonl")[-1]["status"] == "stopped"


def test_oom_recovery_keeps_effective_batch(tmp_path):
    def oom_above_one(trainer, indices):
        if len(indices) > 1:
            raise torch.OutOfMemoryError("fake: CUDA out of memory")

    recovered = Trainer(_profile(tmp_path, "oom", train={"batch_size": 4, "grad_accum": 1}),
                        hooks=TrainerHooks(before_micro_batch=oom_above_one)).run()
    reference = train(_profile(tmp_path, "ref", train={"batch_size": 1, "grad_accum": 4}))
    _assert_same_weights(_lora_weights(tmp_path / "oom"), _lora_weights(tmp_path / "ref"))
    assert recovered.losses == pytest.approx(reference.losses, abs=1e-6)
    events = read_events(tmp_path / "oom" / "events.jsonl")
    ooms = [e for e in events if e["type"] == "oom"]
    assert [(e["micro_batch"], e["grad_accum"]) for e in ooms] == [(2, 2), (1, 4)]
    resolved = (tmp_path / "oom" / "profile.resolved.yaml").read_text()
    assert "batch_size: 1" in resolved and "grad_accum: 4" in resolved


def test_oom_at_micro_batch_one_lists_levers(tmp_path):
    def always_oom(trainer, indices):
        raise torch.OutOfMemoryError("fake")

    with pytest.raises(HardwareError, match="does not fit even at micro-batch 1"):
        Trainer(_profile(tmp_path, train={"batch_size": 1}), hooks=TrainerHooks(before_micro_batch=always_oom)).run()


def test_sigterm_saves_checkpoint_and_partial_adapter_and_exits_3(tmp_path, write_profile):
    """SIGTERM: checkpoint, the last step's adapter marked partial, exit 3 so a batch system sees the job unfinished
    (issue 14 item 9; this test asserted exit 0 before)."""
    data = toy_profile_dict(tmp_path, train={"max_steps": 100000, "checkpoint_every": None},
                            data={"num_train": 4000})
    path = write_profile(data)
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "train", str(path), "--quiet"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events_path = tmp_path / "run" / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if events_path.exists() and sum(1 for e in read_events(events_path) if e["type"] == "step") >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    events = read_events(events_path)
    assert events[-1]["type"] == "end" and events[-1]["status"] == "stopped" and events[-1]["partial"] is True
    meta = json.loads((tmp_path / "run" / "adapter" / "lora3d_metadata.json").read_text())
    assert meta["user"]["partial"] is True and meta["user"]["step"] == events[-1]["step"]
    stop_ckpt = [e for e in events if e["type"] == "checkpoint"]
    assert stop_ckpt and "SIGTERM" in stop_ckpt[-1]["reason"]
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name == f"step-{events[-1]['step']}"
    assert "Traceback" not in err


def test_completed_run_resume_is_noop(tmp_path):
    train(_profile(tmp_path, train={"max_steps": 2}))
    again = train(_profile(tmp_path, train={"max_steps": 2}), resume=True)
    assert again.status == "completed" and again.step == 2 and again.losses == []


def test_checkpoint_manifest_and_no_pickles(tmp_path):
    train(_profile(tmp_path, train={"max_steps": 2}))
    step = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    info = json.loads((step / "checkpoint.json").read_text())
    assert info["format"] == "lora3d-checkpoint/1" and info["state"]["step"] == 2
    for f in (tmp_path / "run").rglob("*"):
        assert f.suffix not in (".pt", ".pth", ".pkl", ".bin"), f


def test_gradient_guard_groups_adapter_pairs():
    from torch import nn

    from engine.train.guards import modules_without_gradient

    class Prompt(nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.up = nn.Linear(2, 2), nn.Linear(2, 2)

    model = nn.Module()
    model.lora3d_prompt = nn.ModuleDict({"enc3": nn.ModuleDict({"qkv": Prompt()})})
    prompt = model.lora3d_prompt["enc3"]["qkv"]
    for p in prompt.parameters():
        p.grad = torch.zeros_like(p)
    prompt.up.weight.grad += 1.0  # zero-initialised `up` gets the gradient first, `down` none: still alive
    assert modules_without_gradient(model) == []
    prompt.up.weight.grad.zero_()
    assert modules_without_gradient(model) == ["lora3d_prompt.enc3.qkv"]


def test_loader_workers_give_the_same_run(tmp_path):
    inline = train(_profile(tmp_path, "inline", train={"max_steps": 10, "checkpoint_every": None}))
    workers = train(_profile(tmp_path, "workers", train={"max_steps": 10, "checkpoint_every": None},
                             data={"num_workers": 2}))
    assert workers.losses == pytest.approx(inline.losses, abs=1e-7)  # 10 steps cross an epoch boundary
    _assert_same_weights(_lora_weights(tmp_path / "inline"), _lora_weights(tmp_path / "workers"))


def test_run_a_few_steps_then_resume_and_the_eval_hook(tmp_path):
    """`run(steps=N)` stops after N steps of this call (as STOP does); `after_eval` sees every evaluation."""
    evals = []
    hooks = TrainerHooks(after_eval=lambda trainer, metrics: evals.append((trainer.state.step, sorted(metrics))))
    first = Trainer(_profile(tmp_path, train={"eval_every": 2}), hooks=hooks, install_signal_handlers=False).run(steps=3)
    assert first.status == "stopped" and first.step == 3 and evals == [(2, ["val_loss"])]
    second = Trainer(_profile(tmp_path, train={"eval_every": 2}), resume=True, hooks=hooks,
                     install_signal_handlers=False).run(steps=2)
    assert second.status == "stopped" and second.step == 5
    last = Trainer(_profile(tmp_path, train={"eval_every": 2}), resume=True, hooks=hooks,
                   install_signal_handlers=False).run()
    assert last.status == "completed" and last.step == 6 and [s for s, _ in evals] == [2, 4, 6]
