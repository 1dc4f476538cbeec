"""Provides SceneSplat scene folders: validated loading, the per-scene dataset and batch collation.

A scene folder holds one `.npy` file per attribute, as SceneSplat's preprocessing writes them
(unique1i/SceneSplat@149d7b6:pointcept/datasets/scannetgs.py):

| file | shape | dtype | meaning |
|---|---|---|---|
| `coord.npy` | (N, 3) | float | Gaussian centres, metres |
| `color.npy` | (N, 3) | uint8 0..255 (or float 0..255 / 0..1) | SH DC colour |
| `opacity.npy` | (N,) or (N, 1) | float in [0, 1] | sigmoid of the 3DGS logit |
| `quat.npy` | (N, 4) | float | rotation (w, x, y, z) |
| `scale.npy` | (N, 3) | float > 0 | exp of the 3DGS log-scale |
| `normal.npy` | (N, 3) | float | optional |
| `segment.npy`, `segment20.npy`, `segment200.npy` | (N,) | int, -1 = ignore | optional labels |
| `instance.npy` | (N,) | int | optional |
| `lang_feat.npy` | (N, D) | float16/32 | optional language features (zero rows = none) |
| `valid_feat_mask.npy` | (N,) | bool/int | optional; derived from non-zero `lang_feat` rows when absent |

Splits are sub-folders `train/`, `val/`, `test/` of the dataset root, each holding scene folders.

NOTE: the model's 11 input channels are `[color(3) in [-1, 1], opacity(1) in [0, 1], quat(4) unit
with w >= 0, scale(3) clipped]`, in that order (`Collect(feat_keys=...)` in transforms.py); this
module produces each of those arrays in its range and transforms.py only concatenates them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import input_limits
from engine.errors import DataError

REQUIRED_FILES = ("coord", "color", "opacity", "quat", "scale")
OPTIONAL_FILES = (
    "normal",
    "segment",
    "segment20",
    "segment200",
    "instance",
    "lang_feat",
    "valid_feat_mask",
)
LABEL_KEYS = ("segment", "segment20", "segment200")
SPLITS = ("train", "val", "test")
# ScanNetGSDataset clips the stored (exp) scale to [0, 1.5]; GenericGSDataset uses [1e-4, 1.0].
DEFAULT_SCALE_CLIP = (0.0, 1.5)
IGNORE_INDEX = -1
# Indexing a split (listing and, with on_error="skip", reading every scene's headers) reports progress
# once it has taken this long, and then at this interval, so a large dataset on a slow disk is not silent.
PROGRESS_AFTER_S = 2.0
PROGRESS_EVERY_S = 5.0

_log = logging.getLogger(__name__)

# name -> (trailing shape, kind); None in a shape means "any size"; kind is "float", "int",
# "color" (uint8 or float) or "mask" (bool or int).
_SPECS: dict[str, tuple[tuple[int | None, ...], str]] = {
    "coord": ((3,), "float"),
    "color": ((3,), "color"),
    "opacity": ((), "float"),
    "quat": ((4,), "float"),
    "scale": ((3,), "float"),
    "normal": ((3,), "float"),
    "segment": ((), "int"),
    "segment20": ((), "int"),
    "segment200": ((), "int"),
    "instance": ((), "int"),
    "lang_feat": ((None,), "float"),
    "valid_feat_mask": ((), "mask"),
}
# 1-D attributes that some exporters write as (N, 1).
_SQUEEZABLE = ("opacity", "segment", "segment20", "segment200", "instance", "valid_feat_mask")


def _shape_text(trailing: tuple[int | None, ...]) -> str:
    dims = ["N"] + ["D" if d is None else str(d) for d in trailing]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def load_npy(path: Path) -> np.ndarray:
    """Loads one `.npy` file without ever unpickling, its header checked against the file first.

    Raises:
        DataNotFoundError: the file is missing.
        DataError: not a regular file (a pipe, a device), truncated, corrupt, a header declaring more than the
            file holds, or Python objects.
    """
    return input_limits.load_npy(path)


def check_array(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    trailing, kind = _SPECS[name]
    if name in _SQUEEZABLE and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    want = _shape_text(trailing)
    shape_ok = array.ndim == 1 + len(trailing) and all(
        d is None or d == s for d, s in zip(trailing, array.shape[1:])
    )
    is_float = np.issubdtype(array.dtype, np.floating)
    is_int = np.issubdtype(array.dtype, np.integer)
    dtype_ok = {
        "float": is_float,
        "int": is_int,
        "color": is_float or array.dtype == np.uint8,
        "mask": is_int or array.dtype == np.bool_,
    }[kind]
    if not (shape_ok and dtype_ok):
        kind_text = {"float": "float", "int": "integer", "color": "uint8 or float", "mask": "bool or integer"}
        raise DataError(
            f"{path}: `{name}` must be a {want} {kind_text[kind]} array, got shape {array.shape} "
            f"dtype {str(array.dtype)!r}. Re-export `{name}` as a {want} {kind_text[kind]} array."
        )
    if is_float and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1)))
        raise DataError(
            f"{path}: `{name}` has NaN or inf values, got {bad} bad rows. "
            "Remove those Gaussians or re-export the scene."
        )
    return array


def load_scene(folder: str | Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Loads and validates one SceneSplat scene folder.

    Arrays come back as stored (no range mapping) except that (N, 1) vectors are squeezed to (N,).

    Args:
        folder: the scene folder.
        names: the optional files to load when present; all known optional files by default.

    Returns:
        name -> array for the required files and every present optional file.

    Raises:
        DataError: a required file is missing, a file is unreadable, an array has the wrong shape or
            dtype, holds NaN/inf, the scene is empty, or the arrays disagree in length.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: scene folder is missing, got no such folder. Check the dataset root and split."
        )
    # exists(), not is_file(): a pipe or device under a scene file's name is named as such by load_npy.
    missing = [n for n in REQUIRED_FILES if not (folder / f"{n}.npy").exists()]
    if missing:
        files = ", ".join(f"`{n}.npy`" for n in missing)
        raise DataError(
            f"{folder}: required files missing, got no {files}. A SceneSplat scene needs "
            f"{', '.join(n + '.npy' for n in REQUIRED_FILES)}; import a 3DGS .ply with `lora3d import-3dgs`."
        )
    wanted = OPTIONAL_FILES if names is None else tuple(n for n in names if n in OPTIONAL_FILES)
    present = list(REQUIRED_FILES) + [n for n in wanted if (folder / f"{n}.npy").exists()]
    scene: dict[str, np.ndarray] = {}
    for name in present:
        path = folder / f"{name}.npy"
        scene[name] = check_array(path, name, load_npy(path))
    n = len(scene["coord"])
    if n == 0:
        raise DataError(
            f"{folder / 'coord.npy'}: scene is empty, got 0 Gaussians. Remove the scene folder or re-export it."
        )
    for name, array in scene.items():
        if len(array) != n:
            raise DataError(
                f"{folder / (name + '.npy')}: length disagrees with coord.npy ({n} Gaussians), got {len(array)}. "
                "Re-export the scene so every file has one row per Gaussian."
            )
    return scene


def normalize_color(color: np.ndarray, path: Path | str = "color") -> np.ndarray:
    """Maps stored colours to SceneSplat's [-1, 1] (`color / 127.5 - 1`).

    uint8 and float colours in [0, 255] use `/127.5 - 1`. Float colours whose maximum is at most 1 are
    taken as [0, 1] and use `*2 - 1` (a [0, 255] scene that dark would be black anyway).

    Args:
        color: (N, 3) uint8 or float.
        path: named in the error message.

    Returns:
        (N, 3) float32 in [-1, 1].
    """
    if color.dtype == np.uint8:
        return color.astype(np.float32) / 127.5 - 1.0
    color = color.astype(np.float32)
    lo, hi = (float(color.min()), float(color.max())) if color.size else (0.0, 0.0)
    if lo < 0.0 or hi > 255.0:
        raise DataError(
            f"{path}: float colours must lie in [0, 1] or [0, 255], got range [{lo:.3g}, {hi:.3g}]. "
            "Store SH DC colours as uint8 (clip(0.5 + 0.28209479 * f_dc, 0, 1) * 255)."
        )
    if hi <= 1.0:
        return color * 2.0 - 1.0
    return color / 127.5 - 1.0


def normalize_quat(quat: np.ndarray) -> np.ndarray:
    """Returns unit quaternions (w, x, y, z) with w >= 0; zero-length rows become the identity.

    Args:
        quat: (N, 4) float, (w, x, y, z).

    Returns:
        (N, 4) float32.
    """
    quat = quat.astype(np.float32)
    norm = np.linalg.norm(quat, axis=1, keepdims=True)
    degenerate = norm[:, 0] < 1e-12
    quat = quat / np.where(norm < 1e-12, 1.0, norm)
    quat[degenerate] = (1.0, 0.0, 0.0, 0.0)
    # q and -q are the same rotation; w >= 0 makes the feature unique (SceneSplat preprocessing).
    quat = np.where(quat[:, :1] < 0, -quat, quat)
    return quat.astype(np.float32)


def build_sample(
    scene: dict[str, np.ndarray],
    name: str = "",
    label_key: str = "segment",
    scale_clip: tuple[float, float] = DEFAULT_SCALE_CLIP,
    folder: Path | str = "",
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Turns a loaded scene into a sample in SceneSplat's feature ranges.

    Args:
        scene: output of `load_scene`.
        name: the scene name carried through to the batch's `scene_names`.
        label_key: which label file becomes `segment`: `segment`, `segment20` or `segment200`;
            a scene without it gets all -1 (ignore).
        scale_clip: (low, high) clip of the stored scale.
        folder: named in error messages.
        num_classes: the semseg head's classes: labels must lie in [0, num_classes) or be ignored (negative
            labels are ignored, as in SceneSplat's data; `ignore_index` names the ignored value). None skips
            the check (the lang task, which reads labels for zero-shot evaluation only).
        ignore_index: the task's ignored label (`model.ignore_index`).

    Returns:
        `name` plus arrays `coord` (N,3) f32, `color` (N,3) f32 in [-1,1], `opacity` (N,1) f32 in [0,1],
        `quat` (N,4) f32 unit w>=0, `scale` (N,3) f32 clipped, `segment` (N,) int64, and when present
        `normal` (N,3) f32, `instance` (N,) int64, `lang_feat` (N,D) as stored, `valid_feat_mask` (N,) bool.

    Raises:
        DataError: an out-of-range opacity, negative scale or colour range, or labels the head cannot
            train on (outside [0, num_classes) and not ignored).
    """
    if label_key not in LABEL_KEYS:
        raise DataError(
            f"label_key: unknown label file, got {label_key!r}. Use one of {', '.join(LABEL_KEYS)}."
        )
    folder = Path(folder)
    n = len(scene["coord"])
    opacity = scene["opacity"].astype(np.float32)
    if opacity.min() < -1e-6 or opacity.max() > 1.0 + 1e-6:
        raise DataError(
            f"{folder / 'opacity.npy'}: opacity must lie in [0, 1], got range "
            f"[{float(opacity.min()):.3g}, {float(opacity.max()):.3g}]. These look like 3DGS logits: "
            "store sigmoid(opacity) or import the .ply with `lora3d import-3dgs`."
        )
    scale = scene["scale"].astype(np.float32)
    if scale.min() < 0:
        raise DataError(
            f"{folder / 'scale.npy'}: scale must be non-negative, got minimum {float(scale.min()):.3g}. "
            "These look like 3DGS log-scales: store exp(scale) or import the .ply with `lora3d import-3dgs`."
        )
    sample: dict[str, Any] = {
        "name": name,
        "coord": scene["coord"].astype(np.float32),
        "color": normalize_color(scene["color"], folder / "color.npy"),
        "opacity": np.clip(opacity, 0.0, 1.0).reshape(n, 1),
        "quat": normalize_quat(scene["quat"]),
        "scale": np.clip(scale, scale_clip[0], scale_clip[1]),
    }
    if label_key in scene:
        segment = scene[label_key].astype(np.int64)
        segment[segment < 0] = IGNORE_INDEX
        if num_classes is not None:
            check_labels(segment, num_classes, ignore_index, folder / f"{label_key}.npy")
        sample["segment"] = segment
    else:
        sample["segment"] = np.full(n, IGNORE_INDEX, dtype=np.int64)
    if "normal" in scene:
        sample["normal"] = scene["normal"].astype(np.float32)
    if "instance" in scene:
        sample["instance"] = scene["instance"].astype(np.int64)
    if "lang_feat" in scene:
        sample["lang_feat"] = scene["lang_feat"]
        if "valid_feat_mask" in scene:
            sample["valid_feat_mask"] = scene["valid_feat_mask"].astype(bool)
        else:
            sample["valid_feat_mask"] = np.any(scene["lang_feat"] != 0, axis=1)
    return sample


def check_labels(segment: np.ndarray, num_classes: int, ignore_index: int, path: Path | str) -> None:
    """Labels (negatives already mapped to -1) are classes of the head or the task's ignored value.

    Raises:
        DataError: labels at or above `num_classes` that are not `ignore_index`, or negative (ignored)
            labels while `ignore_index` is not -1 (the loss would read -1 as a class index).
    """
    if not len(segment):
        return
    lo, hi = int(segment.min()), int(segment.max())
    if (lo >= 0 or ignore_index == IGNORE_INDEX) and hi < num_classes:
        return  # the usual case, decided by two reductions
    outside = (segment >= num_classes) & (segment != ignore_index)
    if outside.any():
        values = np.unique(segment[outside])
        raise DataError(
            f"{path}: labels outside [0, {num_classes}) that are not `model.ignore_index` ({ignore_index}), got "
            f"{int(outside.sum())} points labelled {values[:8].tolist()}{' ...' if len(values) > 8 else ''}. Map "
            "them to -1 (ignored), raise `model.num_classes`, or set `model.ignore_index` to the value your data "
            "uses for unlabelled points."
        )
    negative = segment == IGNORE_INDEX
    if ignore_index != IGNORE_INDEX and negative.any():
        raise DataError(
            f"{path}: {int(negative.sum())} points have negative labels (unlabelled in SceneSplat's data, read as "
            f"-1), but `model.ignore_index` is {ignore_index}, so the loss would take -1 for a class. Set "
            f"`model.ignore_index: -1`, or store those points as {ignore_index}."
        )


def list_scenes(root: str | Path, split: str) -> list[Path]:
    """Returns the sorted scene folders of one split.

    Raises:
        DataError: the root or split folder is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset root is missing, got no such folder. Check `data.root` in the profile."
        )
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"{split_dir}: split folder is missing, got folders {found!r}. "
            f"Put scene folders under {root}/{split}/ (splits: {', '.join(SPLITS)})."
        )
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


class SceneFolderDataset(torch.utils.data.Dataset):
    """The scenes of one split of a SceneSplat-layout dataset, as transformed samples.

    Sample i is reproducible: its transforms draw from `np.random.default_rng((seed, epoch, i))`.
    With on_error="skip", scenes whose headers are bad are dropped at construction and scenes that
    fail to load later are replaced by the next good one; `skipped` lists both (in DataLoader
    worker processes, the later ones are recorded in the worker's copy only).

    Args:
        root: dataset root holding `train/`, `val/`, `test/`.
        split: which split folder to read.
        transforms: called as `transforms(sample, rng=rng)`; None returns the built sample.
        on_error: "stop" raises the first DataError; "skip" records the scene in `skipped`
            and returns the next good scene instead.
        loop: the dataset repeats its scenes this many times per epoch (Pointcept's `loop`).
        label_key: `segment`, `segment20` or `segment200`.
        scale_clip: (low, high) clip of the stored scale.
        seed: base seed of the per-sample generators.
        num_classes: semseg: the head's classes; a scene with labels it cannot train on fails to load
            (see `build_sample`). None skips the check.
        ignore_index: the task's ignored label.
        progress: called with a one-line message while indexing takes longer than
            `PROGRESS_AFTER_S` (every `PROGRESS_EVERY_S`, and once when done); None logs the messages
            at INFO on this module's logger.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Callable[..., dict[str, Any]] | None = None,
        on_error: str = "stop",
        loop: int = 1,
        label_key: str = "segment",
        scale_clip: tuple[float, float] = DEFAULT_SCALE_CLIP,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if on_error not in ("stop", "skip"):
            raise DataError(f"on_error: unknown mode, got {on_error!r}. Use 'stop' or 'skip'.")
        if loop < 1:
            raise DataError(f"loop: must be a positive integer, got {loop!r}. Use 1 or more.")
        if label_key not in LABEL_KEYS:
            raise DataError(
                f"label_key: unknown label file, got {label_key!r}. Use one of {', '.join(LABEL_KEYS)}."
            )
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.on_error = on_error
        self.loop = loop
        self.label_key = label_key
        self.scale_clip = scale_clip
        self.seed = seed
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []
        self.scenes = self._index(progress or (lambda message: _log.info("%s", message)))
        if not self.scenes:
            raise DataError(
                f"{self.root / split}: no usable scene folders, got {len(self.skipped)} skipped. "
                "Add scene folders (one folder of .npy files per scene) or run `lora3d data-check`."
            )

    def _index(self, progress: Callable[[str], None]) -> list[Path]:
        """Lists the split's scene folders (checking their headers with on_error="skip"), reporting progress."""
        start = time.monotonic()
        next_report = start + PROGRESS_AFTER_S
        where = self.root / self.split
        scenes = list_scenes(self.root, self.split)
        reported = False
        kept = []
        for i, folder in enumerate(scenes):
            if self.on_error != "skip" or self._header_ok(folder):
                kept.append(folder)
            now = time.monotonic()
            if now >= next_report:
                progress(f"{where}: indexing scene folders, {i + 1}/{len(scenes)} checked ({now - start:.0f} s)")
                next_report = now + PROGRESS_EVERY_S
                reported = True
        if reported or len(kept) < len(scenes) or time.monotonic() - start >= PROGRESS_AFTER_S:
            progress(f"{where}: indexed {len(kept)} scene folders in {time.monotonic() - start:.1f} s"
                     + (f" ({len(scenes) - len(kept)} skipped)" if len(kept) < len(scenes) else ""))
        return kept

    def _header_ok(self, folder: Path) -> bool:
        """Cheap check at construction: required files exist and their headers agree on N."""
        lengths = {}
        for name in REQUIRED_FILES:
            path = folder / f"{name}.npy"
            try:
                lengths[name] = read_npy_length(path)
            except DataError as err:
                self.skipped.append((folder.name, str(err)))
                return False
        if len(set(lengths.values())) != 1:
            self.skipped.append(
                (
                    folder.name,
                    f"{folder}: required files disagree in length, got {lengths!r}. Re-export the scene.",
                )
            )
            return False
        return True

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draws for the next pass over the data."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scenes) * self.loop

    def load(self, index: int) -> dict[str, Any]:
        """Loads and builds scene `index % len(scenes)` without transforms."""
        folder = self.scenes[index % len(self.scenes)]
        scene = load_scene(folder)
        return build_sample(scene, folder.name, self.label_key, self.scale_clip, folder, self.num_classes,
                            self.ignore_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.scenes)):
            i = (index + attempt) % len(self.scenes)
            try:
                sample = self.load(i)
            except DataError as err:
                if self.on_error == "stop":
                    raise
                name = self.scenes[i].name
                if all(s != name for s, _ in self.skipped):
                    self.skipped.append((name, str(err)))
                continue
            if self.transforms is None:
                return sample
            rng = np.random.default_rng((self.seed, self.epoch, index))
            return self.transforms(sample, rng=rng)
        raise DataError(
            f"{self.root / self.split}: every scene failed to load, got {len(self.skipped)} skipped. "
            "Run `lora3d data-check` to list the problems."
        )


def read_npy_length(path: Path) -> int:
    """Reads an .npy header and checks the file is long enough for the declared array."""
    shape = input_limits.read_npy_header(path).shape
    return int(shape[0]) if shape else 0


def collate_scenes(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenates samples into one batch in Pointcept's offset convention.

    Args:
        samples: transformed samples, each holding at least `coord`, `grid_coord`, `feat`.

    Returns:
        `coord` (N,3) float32, `grid_coord` (N,3) int64, `feat` (N,C) float32, `offset` (B,) int64
        cumulative point counts (scene b = rows [offset[b-1], offset[b])), `segment` (N,) int64 when
        present, `instance` (N,) int64, `lang_feat` (N,D) float32 and `valid_feat_mask` (N,) bool when
        present, and `scene_names` (list of B str).
    """
    if not samples:
        raise ValueError("collate_scenes needs at least one sample")
    names = [str(s.get("name", i)) for i, s in enumerate(samples)]
    batch: dict[str, Any] = {}
    dtypes = {
        "coord": torch.float32,
        "grid_coord": torch.int64,
        "feat": torch.float32,
        "segment": torch.int64,
        "instance": torch.int64,
        "lang_feat": torch.float32,
        "valid_feat_mask": torch.bool,
    }
    for key, dtype in dtypes.items():
        have = [key in s for s in samples]
        if not any(have):
            continue
        if not all(have):
            lacking = [n for n, h in zip(names, have) if not h]
            raise DataError(
                f"{lacking[0]}: batch mixes scenes with and without `{key}`, got it missing in {lacking!r}. "
                f"Give every scene of the split a `{key}.npy` or none of them."
            )
        batch[key] = torch.cat([torch.as_tensor(np.asarray(s[key])).to(dtype) for s in samples], dim=0)
    counts = torch.tensor([len(s["coord"]) for s in samples], dtype=torch.int64)
    batch["offset"] = torch.cumsum(counts, dim=0)
    batch["scene_names"] = names
    return batch


def load_text_embeddings(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Loads a zero-shot text-embedding table and its class names.

    Format: `<name>.npy` (or SceneSplat's `<name>.pt`) holds float [num_classes, dim]; the class
    names come from `<name>.json` (`{"class_names": [...], ...}`) when present, else `class_0..`.

    Returns:
        (num_classes, dim) float32 L2-normalised rows, and the class names.

    Raises:
        DataError: missing or unreadable file, wrong shape, NaN, or a name count that disagrees.
    """
    path = Path(path)
    if path.suffix == ".pt":
        input_limits.regular_file_size(path, "text-embedding file", "Point to the text-embedding file.")
        try:
            table = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataError(
                f"{path}: cannot read the tensor, got {str(err)!r}. Save a plain tensor."
            ) from err
        table = np.asarray(table.float().numpy() if isinstance(table, torch.Tensor) else table)
    else:
        table = load_npy(path)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating) or len(table) == 0:
        raise DataError(
            f"{path}: text embeddings must be a [num_classes, dim] float array, got shape {table.shape} "
            f"dtype {str(table.dtype)!r}. Save one row per class."
        )
    if not np.all(np.isfinite(table)):
        raise DataError(
            f"{path}: text embeddings have NaN or inf values, got {table.shape}. Re-encode the labels."
        )
    names_path = path.with_suffix(".json")
    if names_path.is_file():
        try:
            names = list(json.loads(names_path.read_text())["class_names"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(
                f'{names_path}: expected {{"class_names": [...]}}, got {str(err)!r}. Rewrite the file.'
            ) from err
        if len(names) != len(table):
            raise DataError(
                f"{names_path}: class name count disagrees with {path.name} ({len(table)} rows), got {len(names)}. "
                "Write one name per embedding row."
            )
    else:
        names = [f"class_{i}" for i in range(len(table))]
    table = table.astype(np.float32)
    table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    return table, names
