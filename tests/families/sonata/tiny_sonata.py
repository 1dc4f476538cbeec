"""Tiny Sonata profiles, Pointcept-layout checkpoints and ScanNet-style scene folders shared by the sonata tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from engine.families.recipe import resolve_recipe
from engine.families.scenesplat.synthetic import generate_room
from engine.models.sonata import PointTransformerV3M2, SonataSegmentor

TINY_BACKBONE: dict[str, Any] = dict(
    in_channels=9, order=["z", "z-trans"], stride=[2, 2], enc_depths=[1, 1, 1], enc_channels=[8, 16, 16],
    enc_num_head=[1, 2, 2], enc_patch_size=[64, 64, 64], mlp_ratio=2, drop_path=0.0, shuffle_orders=False,
    enable_flash=False, enc_mode=True,
)
"""A PT-v3m2 with the concatenated head (40 channels)."""

TINY_DECODER: dict[str, Any] = dict(TINY_BACKBONE, enc_mode=False, dec_depths=[1, 1], dec_channels=[8, 16],
                                    dec_num_head=[1, 2], dec_patch_size=[64, 64])
"""The same encoder with a decoder (head on 8 channels)."""

TINY: dict[str, Any] = {
    "schema_version": 1,
    "name": "tiny-sonata",
    "model": {"family": "sonata", "task": "semseg", "backbone": TINY_BACKBONE},
    "lora": {"preset": "pointcept-lora"},
    "data": {"grid_size": 0.1, "synthetic_train": 2, "synthetic_val": 1, "synthetic_points": 600},
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


def tiny_recipe(tmp_path: Path, **sections: dict[str, Any]):
    return resolve_recipe(tiny_profile_data(tmp_path, **sections), source="tiny.yaml")


def randomised(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return model


def write_pretraining_checkpoint(path: Path, backbone: dict[str, Any] = TINY_BACKBONE, seed: int = 0) -> dict:
    """A Sonata/Concerto pretraining `model_last.pth`: student and teacher backbones (DDP keys), a mask token,
    a pretraining head, and the CheckpointSaver's other fields."""
    student = randomised(PointTransformerV3M2(**dict(backbone, enc_mode=True), mask_token=True), seed).state_dict()
    teacher = randomised(PointTransformerV3M2(**dict(backbone, enc_mode=True), mask_token=True), seed + 1).state_dict()
    state = {f"module.student.backbone.{k}": v for k, v in student.items()}
    state |= {f"module.teacher.backbone.{k}": v for k, v in teacher.items()}
    state["module.student.mask_head.weight"] = torch.zeros(4, 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 5, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None,
                "scaler": None, "best_metric_value": None}, path)
    return student


def pointcept_lora_segmentor(backbone: dict[str, Any], num_classes: int, r: int, alpha: float,
                             dropout: float = 0.1) -> torch.nn.Module:
    """A DefaultLORASegmentorV2(use_lora=True) built as Pointcept builds it: the segmentor, then
    `get_peft_model(backbone.enc, LoraConfig(target_modules=["qkv"], ...))` (real PEFT)."""
    model = SonataSegmentor(dict(backbone), num_classes)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["qkv"], lora_dropout=dropout, bias="none")
    model.backbone.enc = get_peft_model(model.backbone.enc, config)
    return model.eval()


def write_scannet_folders(root: Path, num_train: int = 2, num_val: int = 1, num_points: int = 600, seed: int = 0,
                          label_key: str = "segment20") -> Path:
    """Pointcept's preprocessed ScanNet layout: `root/{train,val}/sceneXXXX_00/{coord,color,normal,<label_key>}.npy`
    (coord float32, color uint8, normal float32, labels int16), from the synthetic rooms' geometry."""
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        for i in range(count):
            room = generate_room(np.random.default_rng((seed, split_id, i, 0)), "A", num_points)
            folder = root / split / f"scene{i:04d}_00"
            folder.mkdir(parents=True)
            np.save(folder / "coord.npy", room["coord"].astype(np.float32))
            np.save(folder / "color.npy", room["color"].astype(np.uint8))
            np.save(folder / "normal.npy", room["normal"].astype(np.float32))
            np.save(folder / f"{label_key}.npy", room["segment"].astype(np.int16))
            np.save(folder / "instance.npy", room["instance"].astype(np.int16))
    return root
