"""Provides Sonata's scene folders: Pointcept's preprocessed ScanNet-style folders (and SceneSplat's, with normals).

A scene folder holds one `.npy` file per attribute, as Pointcept's preprocessing writes them
(Pointcept@d74c646 pointcept/datasets/preprocessing/scannet/preprocess_scannet.py, read by
`ScanNetDataset`); splits are sub-folders `train/`, `val/`, `test/` of the dataset root:

| file | shape | dtype | meaning |
|---|---|---|---|
| `coord.npy` | (N, 3) | float | point positions, metres |
| `color.npy` | (N, 3) | uint8 0..255 (or float 0..255 / 0..1) | RGB |
| `normal.npy` | (N, 3) | float | normals |
| `segment20.npy`, `segment200.npy`, `segment.npy` | (N,) | int, -1 = ignore | labels (`data.label_key`) |
| `instance.npy` | (N,) | int | optional |

A SceneSplat scene folder has the same `coord`, `color` and labels (its Gaussian files are not read), so it
loads when it also has `normal.npy`. Loading, validation and the dataset's reproducibility and `on_error`
rules are SceneSplat's (engine.families.scenesplat.data): only the required files and the sample differ.

NOTE: the sample's colour is in [-1, 1] (SceneSplat's transform space); `transforms.UnitColor` maps it to
Pointcept's `NormalizeColor` range (color / 255) just before the features are collected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError
from engine.families.scenesplat.data import (
    IGNORE_INDEX,
    LABEL_KEYS,
    SceneFolderDataset,
    check_array,
    load_npy,
    normalize_color,
    read_npy_length,
)

REQUIRED_FILES = ("coord", "color", "normal")
OPTIONAL_FILES = ("segment", "segment20", "segment200", "instance")


def load_point_scene(folder: str | Path) -> dict[str, np.ndarray]:
    """Loads and validates one scene folder (its coord, color, normal and any label files).

    Raises:
        DataError: a required file is missing (a SceneSplat scene without normals is named as such), a
            file is unreadable, an array has the wrong shape or dtype or holds NaN/inf, the scene is
            empty, or the arrays disagree in length.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: scene folder is missing, got no such folder. Check the dataset root and split.")
    missing = [n for n in REQUIRED_FILES if not (folder / f"{n}.npy").is_file()]
    if missing:
        files = ", ".join(f"`{n}.npy`" for n in missing)
        splat = (" This is a SceneSplat scene (Gaussians): Sonata also needs the points' normals; SceneSplat's "
                 "preprocessing writes `normal.npy` from the mesh.") if (folder / "quat.npy").is_file() else ""
        raise DataError(
            f"{folder / (missing[0] + '.npy')}: required files missing, got no {files}. Sonata's input is coord + color + normal (9 "
            f"channels): a scene needs coord.npy, color.npy and normal.npy, as Pointcept's ScanNet "
            f"preprocessing writes them.{splat}"
        )
    present = list(REQUIRED_FILES) + [n for n in OPTIONAL_FILES if (folder / f"{n}.npy").is_file()]
    scene = {}
    for name in present:
        path = folder / f"{name}.npy"
        scene[name] = check_array(path, name, load_npy(path))
    n = len(scene["coord"])
    if n == 0:
        raise DataError(f"{folder / 'coord.npy'}: scene is empty, got 0 points. Remove the scene folder or re-export it.")
    for name, array in scene.items():
        if len(array) != n:
            raise DataError(
                f"{folder / (name + '.npy')}: length disagrees with coord.npy ({n} points), got {len(array)}. "
                "Re-export the scene so every file has one row per point."
            )
    return scene


def build_point_sample(scene: dict[str, np.ndarray], name: str = "", label_key: str = "segment20",
                       folder: Path | str = "") -> dict[str, Any]:
    """Turns a loaded scene into a sample: `name`, `coord` (N,3) f32, `color` (N,3) f32 in [-1, 1],
    `normal` (N,3) f32, `segment` (N,) int64 (all -1 without the label file) and `instance` when present.

    Raises:
        DataError: an unknown `label_key` or a colour outside [0, 255].
    """
    if label_key not in LABEL_KEYS:
        raise DataError(f"label_key: unknown label file, got {label_key!r}. Use one of {', '.join(LABEL_KEYS)}.")
    n = len(scene["coord"])
    sample: dict[str, Any] = {
        "name": name,
        "coord": scene["coord"].astype(np.float32),
        "color": normalize_color(scene["color"], Path(folder) / "color.npy"),
        "normal": scene["normal"].astype(np.float32),
    }
    if label_key in scene:
        segment = scene[label_key].astype(np.int64)
        segment[segment < 0] = IGNORE_INDEX
        sample["segment"] = segment
    else:
        sample["segment"] = np.full(n, IGNORE_INDEX, dtype=np.int64)
    if "instance" in scene:
        sample["instance"] = scene["instance"].astype(np.int64)
    return sample


class PointFolderDataset(SceneFolderDataset):
    """The scenes of one split of a Pointcept ScanNet-style dataset, as transformed samples.

    Same arguments and rules as `SceneFolderDataset` (sample i draws from `default_rng((seed, epoch, i))`,
    `on_error` "stop"/"skip", `loop`); a scene needs coord, color and normal.
    """

    def _header_ok(self, folder: Path) -> bool:
        lengths = {}
        for name in REQUIRED_FILES:
            try:
                lengths[name] = read_npy_length(folder / f"{name}.npy")
            except DataError as err:
                self.skipped.append((folder.name, str(err)))
                return False
        if len(set(lengths.values())) != 1:
            self.skipped.append((folder.name, f"{folder}: required files disagree in length, got {lengths!r}. "
                                              "Re-export the scene."))
            return False
        return True

    def load(self, index: int) -> dict[str, Any]:
        folder = self.scenes[index % len(self.scenes)]
        return build_point_sample(load_point_scene(folder), folder.name, self.label_key, folder)
