"""Tiny SceneSplat profiles and checkpoints shared by the scenesplat family tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from engine.families.recipe import resolve_recipe
from engine.families.scenesplat.options import DEMO_TINY_CONFIG
from engine.models.ptv3 import PTv3Segmentor

TINY: dict[str, Any] = {
    "schema_version": 1,
    "name": "tiny-scenesplat",
    "model": {"family": "scenesplat", "task": "semseg", "backbone": "demo-tiny"},
    "lora": {"r": 4, "alpha": 8, "target_modules": ["attn", "mlp"], "encoder_only": False},
    "data": {"grid_size": 0.1, "synthetic_train": 2, "synthetic_val": 1, "synthetic_points": 700},
    "train": {"max_steps": 2, "batch_size": 1, "lr": 0.01, "device": "cpu", "seed": 0},
    "output": {"dir": "runs/tiny", "tensorboard": False},
}


def tiny_profile_data(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """TINY with its run dir under `tmp_path` and each given section updated."""
    data = copy.deepcopy(TINY)
    data["output"]["dir"] = str(tmp_path / "run")
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def tiny_profile(tmp_path: Path, **sections: dict[str, Any]):
    return resolve_recipe(tiny_profile_data(tmp_path, **sections), source="tiny.yaml")


def write_base_checkpoint(path: Path, num_classes: int = 6, seed: int = 0, ddp: bool = True) -> dict[str, torch.Tensor]:
    """A random demo-tiny segmentor saved as Pointcept's trainer does (`{"epoch", "state_dict"}`, DDP keys)."""
    torch.manual_seed(seed)
    model = PTv3Segmentor(dict(DEMO_TINY_CONFIG), num_classes)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running_var" in name:
                buf.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                buf.normal_(0.0, 0.1)
    state = model.state_dict()
    keys = {(f"module.{k}" if ddp else k): v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": keys}, path)
    return state


def train_tiny_run(root: Path, task: str = "semseg", num_classes: int = 6, seed: int = 0) -> Path:
    """A completed 2-step LoRA run of TINY on its own random base (`root/base.pth`): `root/run`.

    `lang` trains on synthetic rooms with 32-d language features (demo-tiny's output width) and evaluates
    zero-shot against the synthetic text table.
    """
    from engine.train.trainer import train

    base = root / "base.pth"
    root.mkdir(parents=True, exist_ok=True)
    if task == "semseg":
        write_base_checkpoint(base, num_classes=num_classes, seed=seed)
    else:
        torch.manual_seed(seed)
        from engine.models.ptv3 import PTv3LanguageModel

        torch.save({"epoch": 1, "state_dict": PTv3LanguageModel(dict(DEMO_TINY_CONFIG)).state_dict()}, base)
    model = {"task": task, "pretrained": str(base)}
    if task == "semseg" and num_classes != 6:
        model["num_classes"] = num_classes
    recipe = resolve_recipe(tiny_profile_data(root, model=model, train={"seed": seed}), source="tiny.yaml")
    train(recipe, install_signal_handlers=False)
    return root / "run"
