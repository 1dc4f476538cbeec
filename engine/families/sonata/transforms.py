"""Provides Sonata's per-sample pipelines, built from SceneSplat's transforms (engine.families.scenesplat.transforms).

The steps and amounts follow Pointcept's Sonata/Concerto semseg configs
(Pointcept@d74c646 configs/concerto/semseg-ptv3-large-v1m1-0f-scannet-ft-lora.py, `data.train.transform`):
CenterShift(z) -> RandomDropout(0.2, always) -> RandomRotate z (full turn, p 0.5), x and y (+-pi/64, p 0.5)
-> RandomScale(0.9, 1.1) -> RandomFlip(0.5) -> RandomJitter(0.005, clip 0.02) -> ChromaticAutoContrast(0.2)
-> ChromaticTranslation(0.95, 0.05) -> ChromaticJitter(0.95, 0.05) -> GridSample(train) -> SphereCrop
(`data.point_budget`; Pointcept: 102400) -> CenterShift -> NormalizeColor -> Collect(coord, color, normal).

Differences, said once: ElasticDistortion is left out (as in lora3d's SceneSplat pipeline); validation
keeps the lowest-index point of each voxel (deterministic) where Pointcept's val GridSample draws one at
random, and is scored on the voxelised points (Pointcept's tester maps back to every input point).
"""

from __future__ import annotations

import numpy as np

from engine.families.scenesplat.transforms import (
    ChromaticAutoContrast,
    ChromaticJitter,
    ChromaticTranslation,
    Collect,
    Compose,
    RandomDropout,
    RandomFlip,
    RandomJitter,
    RandomRotate,
    RandomScale,
    Sample,
    Transform,
    scene_pipeline,
)

FEAT_KEYS = ("coord", "color", "normal")
"""Sonata's 9 input channels, in `Collect`'s order."""


class UnitColor(Transform):
    """Maps colour from [-1, 1] (the transforms' space, `c / 127.5 - 1`) to Pointcept's `NormalizeColor`
    range [0, 1] (`c / 255` since Pointcept v1.6, the range Sonata and Concerto were trained with)."""

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        color = sample["color"]
        return {**sample, "color": ((color + 1.0) * 0.5).astype(color.dtype, copy=False)}


def build_sonata_transforms(split: str, grid_size: float = 0.02, point_budget: int | None = None,
                            augment: bool = True, seed: int | None = None) -> Compose:
    """Sonata's pipeline for a split.

    Args:
        split: "train" (random voxel point, random crop, augmentations when `augment`) or "val"/"test"
            (deterministic voxel point and centre crop, no augmentation).
        grid_size: voxel edge in metres.
        point_budget: keep at most this many points per scene after voxelisation; None keeps all.
        augment: apply the train augmentations (ignored for val/test).
        seed: seed of the fallback generator (a generator passed at call time wins).
    """
    augmentations = [
        RandomDropout(dropout_ratio=0.2, p=1.0),
        RandomRotate(angle=(-1, 1), axis="z", p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", p=0.5),
        RandomScale(scale=(0.9, 1.1)),
        RandomFlip(p=0.5),
        RandomJitter(sigma=0.005, clip=0.02),
        ChromaticAutoContrast(p=0.2),
        ChromaticTranslation(p=0.95, ratio=0.05),
        ChromaticJitter(p=0.95, std=0.05),
    ]
    return scene_pipeline(split, grid_size, point_budget, augmentations if augment else [],
                          [UnitColor(), Collect(feat_keys=FEAT_KEYS, optional_keys=("name", "instance"))], seed)
