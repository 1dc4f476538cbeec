"""Provides `lora3d train PROFILE --launch`: the accelerate launch command composed from the profile's `launch` section.

`accelerate launch -m engine train PROFILE` works directly as well; this only saves typing the flags and
keeps them in the profile, so the wizard's multi-GPU choice reruns the same way.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import torch

from engine.errors import HardwareError
from engine.profile.schema import Profile


def launch_command(profile: Profile, profile_path: str, overrides: list[str], out: str | None = None,
                   resume: bool = False, force: bool = False) -> list[str]:
    """The argv that runs this profile on `launch.num_processes` processes over `launch.num_machines` machines."""
    launch = profile.launch
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(launch.num_processes),
           "--num_machines", str(launch.num_machines),
           "--machine_rank", str(launch.machine_rank),
           "--mixed_precision", profile.train.mixed_precision,
           "--dynamo_backend", "no"]
    if launch.num_machines > 1:
        if not launch.main_process_ip:
            raise HardwareError(
                "`launch.main_process_ip` is required with `launch.num_machines` > 1: set it to the address of "
                "machine rank 0, e.g. `--set launch.main_process_ip=10.0.0.1`."
            )
        cmd += ["--main_process_ip", launch.main_process_ip, "--main_process_port", str(launch.main_process_port)]
    elif launch.num_processes > 1:
        cmd += ["--main_process_port", str(launch.main_process_port)]
    if launch.distributed_type == "fsdp":
        if not torch.cuda.is_available():
            raise HardwareError("`launch.distributed_type: fsdp` needs CUDA GPUs. Use `ddp` on the CPU.")
        cmd += ["--use_fsdp"]
    elif launch.num_processes > 1:
        cmd += ["--multi_gpu"]  # accelerate's DDP launcher; on a CPU-only machine it runs gloo processes
    cmd += ["-m", "engine", "train", profile_path]
    if overrides:
        cmd += ["--set", *overrides]
    if out:
        cmd += ["--out", out]
    if resume:
        cmd += ["--resume"]
    if force:
        cmd += ["--force"]
    return cmd


def launch_profile(profile: Profile, profile_path: str, overrides: list[str], out: str | None = None,
                   resume: bool = False, force: bool = False) -> int:
    """Runs `accelerate launch` for an already validated profile; returns its exit code.

    `force`: the launching process has already checked (or skipped) the memory check; the workers skip it.
    """
    cmd = launch_command(profile, profile_path, overrides, out=out, resume=resume, force=force)
    print("launching:", shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)
