"""Provides the SceneSplat family's datasets: scene folders or the built-in synthetic rooms, with the transforms.

Samples are deterministic given (train seed, epoch, index): the trainer's exact resume depends on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.families.scenesplat.data import SceneFolderDataset, build_sample
from engine.families.scenesplat.synthetic import DOMAINS, generate_room
from engine.families.scenesplat.transforms import build_transforms


class SyntheticRoomDataset(torch.utils.data.Dataset):
    """Synthetic rooms generated in memory, with the same transforms as a scene folder.

    Room i of a split is `generate_room(default_rng((seed, split_id, i, domain_id)))`, as
    `write_synthetic_dataset` writes it; sample i of an epoch draws its augmentation from
    `default_rng((train_seed, epoch, i))`.
    """

    def __init__(
        self,
        split: str,
        count: int,
        domain: str = "B",
        seed: int = 0,
        num_points: int = 6000,
        lang_dim: int | None = None,
        shift: float = 1.0,
        transforms: Any = None,
        sample_seed: int = 0,
        loop: int = 1,
    ) -> None:
        split_id = 0 if split == "train" else 1
        self.rooms = [
            build_sample(generate_room(np.random.default_rng((seed, split_id, i, DOMAINS.index(domain))), domain,
                                       num_points, lang_dim, shift), name=f"synthetic_{split}_{i:04d}")
            for i in range(count)
        ]
        self.transforms = transforms
        self.sample_seed = sample_seed
        self.loop = loop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rooms) * self.loop

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.rooms[index % len(self.rooms)].items()}
        if self.transforms is None:
            return sample
        return self.transforms(sample, rng=np.random.default_rng((self.sample_seed, self.epoch, index)))


def build_datasets(
    profile: Any, lang_dim: int | None, num_classes: int | None = None
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """Train and validation datasets of a resolved profile.

    Args:
        profile: the resolved profile.
        lang_dim: the feature width for the lang task.
        num_classes: semseg: the head's classes; scene-folder labels are checked against them and
            `model.ignore_index` as each scene loads (a bad label must not reach the loss).
    """
    data = profile.data
    seed = profile.train.seed

    def transforms(split: str):
        return build_transforms(split, grid_size=data.grid_size, point_budget=data.point_budget, augment=data.augment)

    if data.root is None:
        common = dict(domain=data.synthetic_domain, seed=data.synthetic_seed, num_points=data.synthetic_points,
                      lang_dim=lang_dim, shift=data.synthetic_shift, sample_seed=seed)
        train = SyntheticRoomDataset("train", data.synthetic_train, transforms=transforms("train"),
                                     loop=data.loop, **common)
        val = (SyntheticRoomDataset("val", data.synthetic_val, transforms=transforms("val"), **common)
               if data.val_split is not None and data.synthetic_val > 0 else None)
        return train, val
    labels = dict(num_classes=num_classes, ignore_index=profile.model.ignore_index)
    train = SceneFolderDataset(data.root, data.train_split, transforms("train"), on_error=data.on_error,
                               loop=data.loop, label_key=data.label_key, seed=seed, **labels)
    val = None
    if data.val_split is not None and (Path(data.root) / data.val_split).is_dir():
        val = SceneFolderDataset(data.root, data.val_split, transforms("val"), on_error=data.on_error,
                                 label_key=data.label_key, seed=seed, **labels)
    return train, val
