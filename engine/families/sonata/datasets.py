"""Provides the Sonata family's datasets: scene folders or the built-in synthetic rooms, with Sonata's transforms.

The synthetic rooms are SceneSplat's (engine.families.scenesplat.synthetic: the same geometry, the same two
appearance domains); Sonata reads their points, colours and normals and ignores the Gaussian attributes.
Samples are deterministic given (train seed, epoch, index): the trainer's exact resume depends on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.families.scenesplat.datasets import SyntheticRoomDataset
from engine.families.scenesplat.synthetic import DOMAINS, generate_room
from engine.families.sonata.data import PointFolderDataset, build_point_sample
from engine.families.sonata.transforms import build_sonata_transforms


class SyntheticPointRoomDataset(SyntheticRoomDataset):
    """Synthetic rooms generated in memory as coloured point clouds with normals.

    Room i of a split is `generate_room(default_rng((seed, split_id, i, domain_id)))`, as SceneSplat's
    `write_synthetic_dataset` writes it; sample i of an epoch draws its augmentation from
    `default_rng((sample_seed, epoch, i))` (SceneSplat's `SyntheticRoomDataset`, whose indexing this reuses).
    """

    def __init__(self, split: str, count: int, domain: str = "B", seed: int = 0, num_points: int = 6000,
                 shift: float = 1.0, transforms: Any = None, sample_seed: int = 0, loop: int = 1) -> None:
        split_id = 0 if split == "train" else 1
        self.rooms = [
            build_point_sample(generate_room(np.random.default_rng((seed, split_id, i, DOMAINS.index(domain))), domain,
                                             num_points, None, shift), f"synthetic_{split}_{i:04d}", "segment")
            for i in range(count)
        ]
        self.transforms = transforms
        self.sample_seed = sample_seed
        self.loop = loop
        self.epoch = 0


def build_datasets(profile: Any) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """Train and validation datasets of a resolved profile."""
    data = profile.data
    seed = profile.train.seed

    def transforms(split: str):
        return build_sonata_transforms(split, data.grid_size, data.point_budget, data.augment)

    if data.root is None:
        common = dict(domain=data.synthetic_domain, seed=data.synthetic_seed, num_points=data.synthetic_points,
                      shift=data.synthetic_shift, sample_seed=seed)
        train = SyntheticPointRoomDataset("train", data.synthetic_train, transforms=transforms("train"),
                                          loop=data.loop, **common)
        val = (SyntheticPointRoomDataset("val", data.synthetic_val, transforms=transforms("val"), **common)
               if data.val_split is not None and data.synthetic_val > 0 else None)
        return train, val
    train = PointFolderDataset(data.root, data.train_split, transforms("train"), on_error=data.on_error,
                               loop=data.loop, label_key=data.label_key, seed=seed)
    val = None
    if data.val_split is not None and (Path(data.root) / data.val_split).is_dir():
        val = PointFolderDataset(data.root, data.val_split, transforms("val"), on_error=data.on_error,
                                 label_key=data.label_key, seed=seed)
    return train, val
