"""Provides reading and validation of one prepared MIDI scene folder (the output of prepare_dataset).

A prepared scene is ``manifest.json`` + one ``<instance>.npz`` per instance (float32 ``surface_points``
(N, 3) in [-1, 1] and unit ``surface_normals`` (N, 3)) + ``image.png`` (RGB) + ``seg.png`` (0 =
background, ``i + 1`` = ``instances[i]``). Every check names the scene, the file and the fix, because a
bad file found at step 10,000 of a run is far more expensive than one found here.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from engine import input_limits
from engine.errors import DataError
from engine.families.midi.prepare import MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION

__all__ = ["PreparedScene", "list_prepared_scenes", "load_prepared_scene"]

_FIX = "Re-run `python scripts/prepare_data.py` for this scene"
_NORMAL_TOLERANCE = 1e-3
_RANGE_TOLERANCE = 1e-4
MAX_SURFACE_BYTES = 64 * 1024 * 1024
"""Largest surface array read from an instance `.npz` (5.6M points; MIDI trains on 20,480)."""


@dataclass
class PreparedScene:
    """One prepared scene, validated; instances are in id order (id = index + 1)."""

    name: str
    folder: Path
    manifest: dict
    instance_names: list[str]
    surface_points: list[np.ndarray]
    """Per instance, float32 (N, 3) in the scene's shared [-1, 1] frame."""
    surface_normals: list[np.ndarray]
    """Per instance, float32 (N, 3), unit length."""
    image: np.ndarray
    """uint8 (H, W, 3) RGB."""
    id_map: np.ndarray
    """uint8 or uint16 (H, W); 0 = background, i + 1 = instance i."""

    @property
    def num_instances(self) -> int:
        return len(self.instance_names)

    def surfaces(self) -> np.ndarray:
        """All instances as MIDI's `surface` array: float32 (num_instances, N, 6) = xyz + normal."""
        return np.stack([np.concatenate([p, n], axis=1) for p, n in zip(self.surface_points, self.surface_normals)])

    def instance_mask(self, index: int) -> np.ndarray:
        """Boolean (H, W) mask of instance `index` (0-based)."""
        return self.id_map == index + 1


def list_prepared_scenes(root: str | Path) -> list[Path]:
    """Return the prepared scene folders under `root` (those with a manifest.json), sorted by name.

    Raises:
        DataError: `root` is missing or holds no prepared scene.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: prepared-data folder does not exist, got {str(root)!r}. Run `python scripts/prepare_data.py --output_dir {root}` first")
    scenes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file())
    if not scenes:
        raise DataError(f"{root}: no prepared scenes, got no sub-folder with a manifest.json. Run `python scripts/prepare_data.py --output_dir {root}` first")
    return scenes


def _fail(folder: Path, file: str, what: str) -> DataError:
    return DataError(f"{folder.name}/{file}: {what}. {_FIX}.")


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(folder, "manifest.json", "is missing, got a folder without a manifest") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(folder, "manifest.json", f"is not valid JSON, got {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise _fail(folder, "manifest.json", f"`format` must be {MANIFEST_FORMAT!r}, got {got!r}")
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise _fail(folder, "manifest.json", f"`format_version` must be {MANIFEST_FORMAT_VERSION}, got {manifest.get('format_version')!r}")
    instances = manifest.get("instances")
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) and "file" in i and "name" in i for i in instances):
        raise _fail(folder, "manifest.json", f"`instances` must be a non-empty list of {{name, file}}, got {instances!r}")
    return manifest


def _read_surface(folder: Path, file: str, num_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    path = folder / file
    if path.exists():
        # A compressed member inflates to whatever its header declares: check that before numpy allocates it.
        try:
            input_limits.check_npz_members(path, MAX_SURFACE_BYTES)
        except DataError as exc:
            raise _fail(folder, file, str(exc).removeprefix(f"{path}: ").rstrip(".")) from None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise _fail(folder, file, "is missing, got a manifest entry without its file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _fail(folder, file, f"could not be read as .npz, got {type(exc).__name__}: {exc}") from None
    for key in ("surface_points", "surface_normals"):
        if key not in arrays:
            raise _fail(folder, file, f"needs `{key}`, got keys {sorted(arrays)!r}")
    points, normals = arrays["surface_points"], arrays["surface_normals"]
    for key, array in (("surface_points", points), ("surface_normals", normals)):
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[1] != 3:
            raise _fail(folder, file, f"`{key}` must be float32 (N, 3), got {array.dtype} {array.shape}")
        if not np.isfinite(array).all():
            raise _fail(folder, file, f"`{key}` must be finite, got {int((~np.isfinite(array)).sum())} NaN/inf values")
    if points.shape != normals.shape:
        raise _fail(folder, file, f"`surface_points` and `surface_normals` must match, got {points.shape} and {normals.shape}")
    if num_samples is not None and len(points) != num_samples:
        raise _fail(folder, file, f"must hold `num_samples` = {num_samples} points, got {len(points)}")
    if np.abs(points).max(initial=0.0) > 1.0 + _RANGE_TOLERANCE:
        raise _fail(folder, file, f"`surface_points` must lie in [-1, 1], got max |x| = {float(np.abs(points).max()):.4f}")
    lengths = np.linalg.norm(normals, axis=1)
    if len(lengths) and np.abs(lengths - 1.0).max() > _NORMAL_TOLERANCE:
        raise _fail(folder, file, f"`surface_normals` must be unit length, got lengths in [{lengths.min():.4f}, {lengths.max():.4f}]")
    return points, normals


def _read_image(folder: Path, file: str, grayscale: bool) -> np.ndarray:
    path = folder / file
    if not path.exists():
        raise _fail(folder, file, "is missing, got no file")
    if not path.is_file():
        raise _fail(folder, file, "is not a regular file, got a folder, pipe or device")
    try:
        with input_limits.open_lazily(path) as img:  # bounded: the size is checked before decoding
            img.load()
            mode, array = img.mode, np.array(img)
    except input_limits.ImageTooLargeError as exc:
        raise _fail(folder, file, str(exc)) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise _fail(folder, file, f"could not be read as an image, got {type(exc).__name__}: {exc}") from None
    if not grayscale and mode != "RGB":
        raise _fail(folder, file, f"must be an RGB image, got mode {mode!r}")
    return array


def load_prepared_scene(folder: str | Path) -> PreparedScene:
    """Load and validate a prepared scene folder.

    Raises:
        DataError: naming the scene and file, for a missing or malformed manifest, surface file, image
            or id map (wrong dtype or shape, NaN, non-unit normals, ids that match no instance).
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    num_samples = manifest.get("num_samples")
    entries = manifest["instances"]
    points, normals = [], []
    for entry in entries:
        p, n = _read_surface(folder, entry["file"], num_samples if isinstance(num_samples, int) else None)
        points.append(p)
        normals.append(n)
    image_file = manifest.get("image", {}).get("file", "image.png")
    id_file = manifest.get("id_map", {}).get("file", "seg.png")
    image = _read_image(folder, image_file, grayscale=False)
    id_map = _read_image(folder, id_file, grayscale=True)
    if id_map.ndim != 2 or id_map.dtype not in (np.uint8, np.uint16, np.int32):
        raise _fail(folder, id_file, f"must be a single-channel integer image, got {id_map.dtype} {id_map.shape}")
    if id_map.shape != image.shape[:2]:
        raise _fail(folder, id_file, f"must match the image size {image.shape[:2]}, got {id_map.shape}")
    bad = sorted(int(i) for i in np.unique(id_map) if i < 0 or i > len(entries))
    if bad:
        raise _fail(folder, id_file, f"has ids that match no instance, got {bad} with {len(entries)} instances (valid 0..{len(entries)})")
    id_map = id_map.astype(np.uint8 if len(entries) <= 255 else np.uint16)
    return PreparedScene(
        name=str(manifest.get("scene", folder.name)),
        folder=folder,
        manifest=manifest,
        instance_names=[str(e["name"]) for e in entries],
        surface_points=points,
        surface_normals=normals,
        image=image,
        id_map=id_map,
    )
