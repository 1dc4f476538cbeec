"""Promise: `lora3d train` refuses, before building anything, a run the memory planner says cannot fit this
machine even at the smallest micro-batch OOM recovery reaches, with the levers to pull (exit 2); `--force`
tries anyway. During a run, every allocator failure torch reports is recognised and recovered from."""

from __future__ import annotations

import pytest
import torch
import yaml

from engine.cli import main as cli_main
from engine.errors import HardwareError
from engine.families.recipe import resolve_recipe
from engine.memory.oom import check_fits
from engine.memory.plan import fake_hardware
from engine.train.events import read_events
from engine.train.oom import is_oom
from engine.train.trainer import Trainer, TrainerHooks, train
from tests.conftest import toy_profile_dict
from tests.families.scenesplat.tiny_scenesplat import tiny_profile, tiny_profile_data

HUGE = {"synthetic_points": 10_000_000}
"""A SceneSplat profile whose estimate (about 130 GB at micro-batch 1) no test machine has."""


def test_check_fits_refuses_with_both_numbers_and_the_levers(tmp_path):
    recipe = tiny_profile(tmp_path, data=HUGE)
    with pytest.raises(HardwareError) as info:
        check_fits(recipe, fake_hardware(0, host_ram_gb=24))
    message = str(info.value)
    assert "this run cannot fit" in message and "at micro-batch 1" in message
    assert "22.00 GB" in message  # 24 GB of RAM less the 2 GB the system keeps
    assert "1. `train.gradient_checkpointing=true`" in message and "`data.point_budget=" in message
    assert "--force" in message
    check_fits(tiny_profile(tmp_path), fake_hardware(0, host_ram_gb=24))  # the small one fits: no error


def test_check_fits_uses_the_profile_micro_batch_when_recovery_is_off(tmp_path):
    recipe = tiny_profile(tmp_path, data={"synthetic_points": 400_000}, train={"batch_size": 64, "oom_recovery": False})
    with pytest.raises(HardwareError, match="micro-batch 64 \\(`train.oom_recovery` is off\\)"):
        check_fits(recipe, fake_hardware(0, host_ram_gb=24))
    check_fits(recipe.with_overrides({"train.oom_recovery": True}), fake_hardware(0, host_ram_gb=24))


def test_train_refuses_before_building_anything_and_force_tries(tmp_path, monkeypatch, capsys):
    data = tiny_profile_data(tmp_path, data=HUGE, train={"max_steps": 1})
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("LORA3D_FAKE_GPU_GB", "0")  # a CPU machine with 64 GB of RAM, whatever runs the test
    built = []
    monkeypatch.setattr("engine.train.trainer.Trainer.setup", lambda self: built.append(True) or 1 / 0)
    assert cli_main(["train", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "this run cannot fit" in err and "Traceback" not in err and err.count("error:") == 1
    assert built == [] and not (tmp_path / "run").exists()  # nothing built, nothing written
    with pytest.raises(ZeroDivisionError):  # --force goes on to build (stubbed here: 10 M points take minutes)
        cli_main(["train", str(path), "--quiet", "--force"])
    assert built == [True] and "--force: the memory check before training is skipped" in capsys.readouterr().err


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."), True),
    (RuntimeError("std::bad_alloc"), True),
    (MemoryError(), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"), True),
    (RuntimeError("HIP out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("shape '[2, 3]' is invalid for input of size 7"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom_recognises_allocator_failures(error, expected):
    assert is_oom(error) is expected


def test_cpu_bad_alloc_starts_oom_recovery(tmp_path):
    """`std::bad_alloc` from a CPU kernel used to end the run: now the micro-batch halves, the samples stay."""
    def bad_alloc_above_one(trainer, indices):
        if len(indices) > 1:
            raise RuntimeError("std::bad_alloc")

    recovered = Trainer(resolve_recipe(toy_profile_dict(tmp_path / "a", train={"batch_size": 4, "grad_accum": 1})),
                        hooks=TrainerHooks(before_micro_batch=bad_alloc_above_one), install_signal_handlers=False).run()
    reference = train(resolve_recipe(toy_profile_dict(tmp_path / "b", train={"batch_size": 1, "grad_accum": 4})))
    assert recovered.losses == pytest.approx(reference.losses, abs=1e-6)
    ooms = [e for e in read_events(tmp_path / "a" / "run" / "events.jsonl") if e["type"] == "oom"]
    assert [(e["micro_batch"], e["grad_accum"]) for e in ooms] == [(2, 2), (1, 4)]


def test_oom_at_micro_batch_one_names_the_resumable_lever(tmp_path):
    def always(trainer, indices):
        raise MemoryError()

    with pytest.raises(HardwareError) as info:
        Trainer(resolve_recipe(toy_profile_dict(tmp_path, train={"batch_size": 1})),
                hooks=TrainerHooks(before_micro_batch=always), install_signal_handlers=False).run()
    assert "does not fit even at micro-batch 1" in str(info.value)
    assert "The first can be switched on for a --resume; the others change the run" in str(info.value)
