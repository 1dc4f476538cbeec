"""The measured memory probe runs the Trainer's own loop (hooks, N steps), in a child process per candidate."""

from __future__ import annotations

import json

import pytest
import yaml

from engine.families.recipe import resolve_recipe
from engine.memory.probe import Candidate, probe_candidate, probe_profile
from engine.train.memory_probe import run_probe
from tests.conftest import toy_profile_dict


def _toy(tmp_path, **train):
    return resolve_recipe(toy_profile_dict(tmp_path, train={"device": "cpu", **train}))


def test_the_probe_runs_the_trainer_for_its_steps_and_stops_before_evaluation_and_saving(tmp_path):
    recipe = _toy(tmp_path, batch_size=4, grad_accum=3, checkpoint_every=1, eval_every=1).with_overrides(
        {"train.max_steps": 50})
    run = tmp_path / "probe-run"
    answer = run_probe({"profile": probe_profile(recipe, "cpu", 2, run), "steps": 2})
    assert "error" not in answer, answer
    assert answer["measured_bytes"] >= answer["extra"]["weights_bytes"] > 0
    assert answer["tokens"] == 4 and answer["extra"]["micro_batch_tokens"] == [4, 4]  # one micro-batch per step
    assert answer["extra"]["steps"] == 2 and answer["extra"]["trainable"] > 0
    # what ran is the Trainer's loop: its events, its resolved profile; stopped after step 2
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]
    assert not any(e["type"] == "eval" for e in events)
    assert not (run / "adapter").exists() and not list((run / "checkpoints").glob("*"))
    train = yaml.safe_load((run / "profile.resolved.yaml").read_text())["train"]
    assert train["grad_accum"] == 1 and train["oom_recovery"] is False and train["max_steps"] == 2


def test_a_micro_batch_larger_than_the_data_is_reported_not_measured(tmp_path):
    recipe = _toy(tmp_path).with_overrides({"data.num_train": 3, "train.batch_size": 8})
    answer = run_probe({"profile": probe_profile(recipe, "cpu", 2, tmp_path / "run2"), "steps": 2})
    assert "fewer than one optimizer step uses" in answer["error"]


@pytest.mark.slow  # a fresh interpreter importing torch and accelerate: seconds of CPU
def test_probe_candidate_measures_in_a_child_process(tmp_path):
    recipe = _toy(tmp_path)
    m = probe_candidate(recipe, Candidate(rank=2, micro_batch=4, gradient_checkpointing=False, precision="no"), "cpu")
    assert m.error is None, m.error
    assert m.measured_bytes and m.measured_bytes > 0 and m.tokens == 4 and m.extra["steps"] == 2
    assert m.estimated_bytes > 0 and m.ratio is not None
