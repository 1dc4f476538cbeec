"""Provides the run's accelerate `Accelerator`: the device and precision the profile asks for, or a refusal."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from engine.errors import HardwareError
from engine.profile import Profile


def build_accelerator(profile: Profile, run_dir: Path) -> Accelerator:
    """The accelerator for `train.device` and `train.mixed_precision`.

    Raises:
        HardwareError: CUDA asked for but not visible, or fp16 on a CPU run.
    """
    train = profile.train
    want_cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    if train.device == "cuda" and not torch.cuda.is_available():
        raise HardwareError(
            "`train.device` is cuda but no CUDA GPU is visible. Set `train.device: auto` or `cpu`, "
            "or check `lora3d probe`."
        )
    if train.mixed_precision == "fp16" and not want_cuda:
        raise HardwareError(
            "`train.mixed_precision` fp16 needs a CUDA GPU, and this run is on the CPU (it would silently "
            "run in fp32). Use `--set train.mixed_precision=bf16` or `train.mixed_precision=no`."
        )
    if "WORLD_SIZE" not in os.environ:
        # One process: a previous run in this interpreter (tests, the wizard's probe) may have set
        # accelerate's global state to other settings.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=train.mixed_precision,
        cpu=not want_cuda,
        log_with="tensorboard" if profile.output.tensorboard else None,
        project_dir=str(run_dir / "tb"),
    )
