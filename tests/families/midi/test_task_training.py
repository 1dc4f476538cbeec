"""Tests MIDI training through the real Trainer: the loss falls, resume is exact, eval is deterministic, merge is strict."""

from __future__ import annotations

import json

import pytest
import torch
from midi_helpers import midi_env_fixture, midi_profile, one_thread_fixture  # noqa: F401
from safetensors.torch import load_file

from engine.families.midi import task as midi_task
from engine.families.midi.family import MidiFamily
from engine.families.midi.task import chamfer_distance, evaluate_scenes
from engine.lora import load_lora_checkpoint
from engine.models.dit import TripoSGDiTModel
from engine.train.trainer import Trainer, TrainerHooks, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_short_run_loss_falls(midi_env, tmp_path):
    profile = midi_profile(midi_env, tmp_path, train={"max_steps": 20, "batch_size": 2, "lr": 0.02, "warmup_steps": 0},
                           model={"cfg_dropout": 0.0}, data={"val_split": None})
    result = train(profile, install_signal_handlers=False)
    assert result.status == "completed" and len(result.losses) == 20
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first, result.losses
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    assert steps[0]["tokens_per_s"] > 0 and "train/cfg_dropped" in steps[0]
    meta = json.loads((tmp_path / "run" / "adapter" / "lora3d_metadata.json").read_text())
    assert meta["user"]["mi_blocks"] == [1] and meta["user"]["num_tokens"] == 16


def test_resume_two_plus_two_equals_four_straight(midi_env, tmp_path):
    sections = {"train": {"max_steps": 4, "checkpoint_every": 2, "warmup_steps": 1}}
    straight = train(midi_profile(midi_env, tmp_path / "a", **sections), install_signal_handlers=False)

    def stop_at_2(trainer):
        if trainer.state.step == 2:
            trainer.stop_reason = "SIGINT"

    halves = midi_profile(midi_env, tmp_path / "b", **sections)
    first = Trainer(halves, hooks=TrainerHooks(after_step=stop_at_2), install_signal_handlers=False).run()
    assert first.status == "stopped" and first.step == 2
    resumed = train(midi_profile(midi_env, tmp_path / "b", **sections), resume=True, install_signal_handlers=False)
    assert resumed.step == straight.step == 4
    assert resumed.losses == pytest.approx(straight.losses[2:], abs=1e-5)
    a, b = _adapter(tmp_path / "a" / "run"), _adapter(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)


def test_evaluation_is_deterministic_and_reports_chamfer(midi_env, tmp_path):
    profile = midi_profile(midi_env, tmp_path, data={"eval_chamfer_every": 1, "eval_chamfer_scenes": 1,
                                                     "eval_sample_steps": 2, "eval_octree_resolution": 12})
    family = MidiFamily()
    model = family.build_model(profile).eval()
    _, val = family.build_datasets(profile)

    def batches():
        return [family.collate([val[i] for i in range(len(val))])]

    first = profile.task.evaluate(model, batches(), with_chamfer=True)
    torch.manual_seed(123)  # the global RNG must not matter
    second = profile.task.evaluate(model, batches(), with_chamfer=True)
    assert first == second
    assert first["val_loss"] > 0 and first["val_chamfer"] > 0 and 0 <= first["val_surface_found"] <= 1
    assert first["val_chamfer_recon"] >= 0
    assert "val_chamfer" not in profile.task.evaluate(model, batches(), with_chamfer=False)


def test_the_ground_truth_reference_is_meshed_once_per_run_and_changes_no_number(midi_env, tmp_path, monkeypatch):
    """The frozen VAE's mesh of the ground truth is the same at every evaluation: kept, not re-extracted."""
    profile = midi_profile(midi_env, tmp_path, data={"eval_chamfer_every": 1, "eval_chamfer_scenes": 1,
                                                     "eval_sample_steps": 2, "eval_octree_resolution": 12})
    family = MidiFamily()
    model = family.build_model(profile).eval()
    _, val = family.build_datasets(profile)
    batches = [family.collate([val[i] for i in range(len(val))])]
    fresh = evaluate_scenes(model, batches, profile.task.num_tokens, profile.task.eval, True)  # nothing kept
    calls = []
    real = midi_task.extract_mesh
    monkeypatch.setattr(midi_task, "extract_mesh", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = [profile.task.evaluate(model, batches, with_chamfer=True) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] == fresh
    assert len(calls) == 3 + 1  # a generated scene per evaluation, the reference once


def test_chamfer_distance_is_zero_for_identical_sets_and_grows_with_offset():
    points = torch.rand(50, 3)
    assert chamfer_distance(points, points) == pytest.approx(0.0, abs=1e-6)
    near = chamfer_distance(points, points + 0.01)
    far = chamfer_distance(points, points + 0.1)
    assert 0 < near < far and far == pytest.approx(0.2, rel=0.5)


@pytest.mark.parametrize("out_name", ["merged_transformer", "merged.safetensors"])
def test_merge_loads_strictly_into_a_plain_dit_and_matches_the_adapter(midi_env, tmp_path, out_name):
    profile = midi_profile(midi_env, tmp_path, train={"max_steps": 2, "lr": 0.05})
    train(profile, install_signal_handlers=False)
    family = MidiFamily()
    out = family.merge_adapter(profile, tmp_path / "run" / "adapter", tmp_path / out_name)
    if out.is_dir():
        plain = TripoSGDiTModel.from_pretrained(str(out), local_files_only=True)
    else:
        plain = TripoSGDiTModel.from_config(TripoSGDiTModel.load_config(str(midi_env["base"] / "transformer")))
        plain.load_state_dict(load_file(str(out)), strict=True)
    adapted = load_lora_checkpoint(family.build_model(profile), tmp_path / "run" / "adapter").eval()
    base = family.build_model(profile).eval()
    plain.eval()
    torch.manual_seed(0)
    x, c1, c2 = torch.randn(2, 16, 8), torch.randn(2, 1, 16), torch.randn(2, 2, 24)
    t = torch.tensor([200.0, 700.0])
    with torch.no_grad():
        want = adapted(x, t, c1, c2).sample
        got = plain(x, t, c1, c2).sample
        before = base(x, t, c1, c2).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, want, atol=1e-5)  # the adapter changed something


def test_first_step_keeps_conditions_when_dropout_would_zero_them_all(midi_env, tmp_path):
    # batch 1 and cfg_dropout 0.99: the first step would zero the only scene's conditions, leaving the
    # cross-attention LoRAs without gradient; the step keeps them, later steps drop as drawn.
    profile = midi_profile(midi_env, tmp_path, train={"max_steps": 3, "batch_size": 1}, model={"cfg_dropout": 0.99})
    result = train(profile, install_signal_handlers=False)
    assert result.status == "completed"
    steps = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    dropped = [e["train/cfg_dropped"] for e in steps if e["type"] == "step"]
    assert dropped[0] == 0.0 and dropped[1:] == [1.0, 1.0]
