"""NaN and divergence: the last good checkpoint stays the newest, no adapter from a bad state, spikes warn."""

from __future__ import annotations

import dataclasses

import torch
import yaml
from safetensors.torch import load_file

from engine.cli import main as cli_main
from engine.families.base import StepOutput
from engine.families.registry import register_family
from engine.train.checkpoint import list_checkpoints
from engine.train.events import read_events
from tests.conftest import toy_profile_dict
from tests.toy_family import ToyFamily, ToyModelOptions, ToyTask


class SpikyModelOptions(ToyModelOptions):
    spike_at_step: int | None = None
    """Test seam: the loss of this one training step is multiplied by 1000."""


@dataclasses.dataclass(frozen=True)
class SpikyTask(ToyTask):
    spike_at_step: int | None = None

    def loss(self, model, batch) -> StepOutput:
        out = super().loss(model, batch)
        step = (model.calls - 1) // self.grad_accum + 1
        if self.spike_at_step is not None and step == self.spike_at_step:
            out.loss = out.loss * 1000.0
        return out


@register_family
class SpikyToyFamily(ToyFamily):
    """The toy family with one loss spike, for the watchdog's warning."""

    name = "toy-spiky"
    wizard = None  # registered at import: kept out of the wizard's model list (snapshots)
    model_options = SpikyModelOptions

    def build_recipe(self, profile, notes, source):
        recipe = super().build_recipe(profile, notes, source)
        task = SpikyTask(recipe.task.nan_at_step, recipe.task.grad_accum, spike_at_step=profile.model.spike_at_step)
        return dataclasses.replace(recipe, task=task)


def _write(tmp_path, family="toy", **sections):
    data = toy_profile_dict(tmp_path, **sections)
    data["model"]["family"] = family
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_nan_mid_run_keeps_last_good_checkpoint_and_writes_no_adapter(tmp_path, capsys):
    profile = _write(tmp_path, model={"nan_at_step": 5}, train={"max_steps": 8, "checkpoint_every": 2})
    code = cli_main(["train", str(profile), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert "loss became nan at step 5" in err and "--resume" in err and "train.lr" in err
    run = tmp_path / "run"
    assert not (run / "adapter").exists()
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-4"
    for tensor in load_file(str(run / "checkpoints" / "step-4" / "trainable.safetensors")).values():
        assert torch.isfinite(tensor).all()
    events = read_events(run / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]  # the NaN step is never logged
    assert events[-2]["type"] == "error" and events[-2]["kind"] == "DivergenceError"
    assert events[-1]["type"] == "end" and events[-1]["status"] == "failed"


def test_loss_spike_warns_in_events_and_the_run_continues(tmp_path, capsys):
    profile = _write(tmp_path, family="toy-spiky", model={"spike_at_step": 8},
                     train={"max_steps": 10, "loss_spike_factor": 10.0})
    assert cli_main(["train", str(profile), "--quiet"]) == 0
    events = read_events(tmp_path / "run" / "events.jsonl")
    warnings = [e for e in events if e["type"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["step"] == 8 and "loss spike at step 8" in warnings[0]["message"]
    assert "train.lr" in warnings[0]["message"]
    assert events[-1]["status"] == "completed"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_no_spike_no_warning(tmp_path, capsys):
    profile = _write(tmp_path, family="toy-spiky", train={"max_steps": 10, "loss_spike_factor": 10.0})
    assert cli_main(["train", str(profile), "--quiet"]) == 0
    assert not [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "warning"]
