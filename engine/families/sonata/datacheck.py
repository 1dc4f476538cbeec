"""Provides the Sonata dataset check: every scene loaded and validated, with counts and a label histogram.

The report is SceneSplat's (`engine.families.scenesplat.datacheck.DataReport`, rendered the same way by
`lora3d data-check`); only what a scene must hold differs (coord, color, normal: engine.families.sonata.data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.families.scenesplat.data import LABEL_KEYS
from engine.families.scenesplat.datacheck import (
    DataReport,
    NamedReport,
    count_labels,
    point_stats,
    scan_scenes,
)
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES
from engine.families.sonata.data import build_point_sample, load_point_scene
from engine.families.sonata.datasets import SyntheticPointRoomDataset


def scan_point_dataset(root: str | Path, splits: list[str], label_key: str = "segment20",
                       num_classes: int | None = None) -> DataReport:
    """Loads and validates every scene of the given splits.

    Args:
        root: dataset root holding the split folders.
        splits: split folders to scan; a missing one is a problem, not an error.
        label_key: `segment`, `segment20` or `segment200`.
        num_classes: labels outside [0, num_classes) other than -1 are problems.

    Raises:
        DataError: the root folder is missing or `label_key` is unknown.
    """
    root = Path(root)

    def read_scene(folder: Path) -> dict[str, np.ndarray]:
        scene = load_point_scene(folder)
        build_point_sample(scene, folder.name, label_key, folder)
        return scene

    report, unlabelled = scan_scenes(root, splits, label_key, num_classes, read_scene, "model.num_classes")
    if unlabelled and report.labelled_scenes == 0:
        others = [k for k in LABEL_KEYS if k != label_key and any(any((root / s).glob(f"*/{k}.npy")) for s in splits)]
        fix = f"Set `data.label_key: {others[0]}`" if others else f"Add {label_key}.npy to the scenes"
        report.problems.append((str(root), f"{label_key}.npy",
                                f"{root}: no scene has `{label_key}.npy`, got {len(unlabelled)} unlabelled scenes "
                                f"(every point would be ignored). {fix}."))
    return report


def check_data(profile: Any, num_classes: int, class_names: list[str]) -> NamedReport:
    """The data check of a resolved profile: its `data.root`, or the built-in rooms (generated in memory)."""
    data = profile.data
    if data.root is not None:
        splits = [s for s in (data.train_split, data.val_split) if s is not None]
        return NamedReport(scan_point_dataset(data.root, splits, data.label_key, num_classes), class_names)
    report = DataReport(root=f"built-in synthetic rooms (domain {data.synthetic_domain})", label_key="segment")
    histogram: dict[int, int] = {}
    for split, count in (("train", data.synthetic_train), ("val", data.synthetic_val if data.val_split else 0)):
        if count == 0:
            continue
        rooms = SyntheticPointRoomDataset(split, count, data.synthetic_domain, data.synthetic_seed, data.synthetic_points,
                                          data.synthetic_shift).rooms
        counts = [len(r["coord"]) for r in rooms]
        report.scenes[split] = len(rooms)
        report.points[split] = point_stats(counts)
        for room in rooms:
            count_labels(room["segment"], histogram)
        report.labelled_scenes += len(rooms)
    report.label_histogram = dict(sorted(histogram.items()))
    return NamedReport(report, list(class_names) or list(SYNTHETIC_CLASSES))
