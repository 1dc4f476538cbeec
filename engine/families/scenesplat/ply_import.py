"""Provides the import of INRIA 3D Gaussian Splatting .ply files into SceneSplat scene folders.

The conversion follows SceneSplat's preprocessing
(unique1i/SceneSplat@149d7b6:pointcept/datasets/preprocessing/scannet/preprocess_scannet_gs.py):

| 3DGS property | scene file | conversion |
|---|---|---|
| x, y, z | coord.npy (N,3) float32 | as is |
| f_dc_0..2 | color.npy (N,3) uint8 | trunc(clip(0.5 + C0 * f_dc, 0, 1) * 255), C0 = 0.28209479177387814 (SH band 0) |
| opacity | opacity.npy (N,) float32 | sigmoid(logit) |
| scale_0..2 | scale.npy (N,3) float32 | exp(log-scale) |
| rot_0..3 | quat.npy (N,4) float32 | (w,x,y,z) L2-normalised, sign flipped so w >= 0 |
| nx, ny, nz | normal.npy (N,3) float32 | only when present and not all zero |

Higher SH bands (`f_rest_*`) are dropped, as SceneSplat does. A scene folder is written into a
hidden temporary folder next to its destination and renamed into place, so a failed import never
leaves a half-written scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plyfile

from engine import input_limits
from engine.atomic import atomic_folder
from engine.errors import DataError
from engine.families.scenesplat.data import load_npy, normalize_quat

SH_C0 = 0.28209479177387814
REQUIRED_PROPERTIES = (
    "x",
    "y",
    "z",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)
def _read_vertices(path: Path) -> np.ndarray:
    # Before plyfile allocates the declared rows: they must fit in the file, and be all of its rows.
    input_limits.read_ply_header(path)
    try:
        ply = plyfile.PlyData.read(str(path))
    except (plyfile.PlyParseError, ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: cannot parse the PLY file, got {str(err)!r}. The file is truncated or corrupt; export it again."
        ) from err
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise DataError(
            f"{path}: no `vertex` element, got elements {names!r}. Export the Gaussians as vertices."
        )
    data = ply["vertex"].data
    missing = [p for p in REQUIRED_PROPERTIES if p not in (data.dtype.names or ())]
    if missing:
        raise DataError(
            f"{path}: not an INRIA 3DGS .ply, missing properties {missing!r}. A 3DGS .ply has "
            "x, y, z, f_dc_0..2, opacity, scale_0..2 and rot_0..3 (as saved by gaussian-splatting)."
        )
    if len(data) == 0:
        raise DataError(f"{path}: the `vertex` element is empty, got 0 Gaussians. Export a trained scene.")
    return data


def convert_3dgs_vertices(data: np.ndarray, path: Path | str = "vertex") -> dict[str, np.ndarray]:
    """Converts a 3DGS vertex record array to SceneSplat scene arrays (see the module table).

    Raises:
        DataError: NaN or inf in any required property.
    """

    def columns(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(data[n], dtype=np.float64) for n in names], axis=1)

    raw = columns(list(REQUIRED_PROPERTIES))
    bad = ~np.isfinite(raw).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: Gaussians with NaN or inf properties, got {int(bad.sum())} of {len(raw)} rows. "
            "Prune them in the 3DGS tool or re-train the scene."
        )
    f_dc = columns(["f_dc_0", "f_dc_1", "f_dc_2"])
    # truncation, not rounding, as SceneSplat's preprocessing
    color = (np.clip(0.5 + SH_C0 * f_dc, 0.0, 1.0) * 255.0).astype(np.uint8)
    logit = np.asarray(data["opacity"], dtype=np.float64)
    opacity = 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))
    scale = np.exp(np.clip(columns(["scale_0", "scale_1", "scale_2"]), -60, 60))
    scene = {
        "coord": columns(["x", "y", "z"]).astype(np.float32),
        "color": color,
        "opacity": opacity.astype(np.float32),
        "quat": normalize_quat(columns(["rot_0", "rot_1", "rot_2", "rot_3"])),
        "scale": scale.astype(np.float32),
    }
    if all(n in (data.dtype.names or ()) for n in ("nx", "ny", "nz")):
        normal = columns(["nx", "ny", "nz"])
        if np.isfinite(normal).all() and np.any(normal != 0):
            scene["normal"] = normal.astype(np.float32)
    return scene


def write_scene_atomic(scene: dict[str, np.ndarray], dest: Path, overwrite: bool = False) -> None:
    """Writes `name.npy` files into a temporary sibling folder and renames it to `dest`.

    Raises:
        DataError: `dest` exists and `overwrite` is False, `dest` is a file (never replaced by a scene), or the
            folder cannot be written.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DataError(
            f"{dest}: is a file, not a scene folder, got an existing file. Choose a folder path for the scene "
            "(the file is left untouched)."
        )
    if dest.exists() and not overwrite:
        raise DataError(
            f"{dest}: scene folder already exists, got {sorted(p.name for p in dest.iterdir())[:6]!r}. "
            "Choose another destination or pass `--overwrite` (overwrite=True) to replace it."
        )
    try:
        with atomic_folder(dest) as tmp:
            for name, array in scene.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    except OSError as exc:
        raise DataError(
            f"{dest}: the scene folder cannot be written, got {exc.strerror or exc}. Check that its parent is a "
            "writable folder with free space; nothing was written."
        ) from None


def import_3dgs_ply(
    src_ply: str | Path,
    dest_scene_dir: str | Path,
    labels: np.ndarray | str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Converts one INRIA 3DGS .ply into a SceneSplat scene folder.

    Args:
        src_ply: the 3DGS .ply (binary or ascii).
        dest_scene_dir: the scene folder to create.
        labels: optional per-Gaussian class ids (N,) int, or a path to such a .npy; written as segment.npy.
        overwrite: replace an existing scene folder.

    Returns:
        `scene`, `path`, `num_points`, `files` (written names), `dropped_sh_coefficients` (count of
        f_rest_* per Gaussian), and `opacity_mean`, `scale_median` (metres) for a quick sanity look.

    Raises:
        DataError: unreadable, truncated or non-3DGS file, empty vertex element, NaN/inf values,
            labels of the wrong length, or an existing destination.
    """
    src_ply, dest = Path(src_ply), Path(dest_scene_dir)
    data = _read_vertices(src_ply)
    scene = convert_3dgs_vertices(data, src_ply)
    n = len(scene["coord"])
    if labels is not None:
        label_path = Path(labels) if isinstance(labels, (str, Path)) else None
        if label_path is not None:
            labels = load_npy(label_path)
        labels = np.asarray(labels)
        where = label_path or "labels"
        if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{where}: labels must be ({n},) integers (one class id per Gaussian of {src_ply.name}), "
                f"got shape {labels.shape} dtype {str(labels.dtype)!r}. Use -1 for unlabelled Gaussians."
            )
        scene["segment"] = labels.astype(np.int32)
    write_scene_atomic(scene, dest, overwrite=overwrite)
    f_rest = sum(1 for name in data.dtype.names if name.startswith("f_rest_"))
    return {
        "scene": dest.name,
        "path": str(dest),
        "num_points": n,
        "files": sorted(f"{k}.npy" for k in scene),
        "dropped_sh_coefficients": f_rest,
        "opacity_mean": float(scene["opacity"].mean()),
        "scale_median": float(np.median(scene["scale"])),
    }


def import_3dgs_folder(
    src_dir: str | Path, dest_root: str | Path, overwrite: bool = False, on_error: str = "stop"
) -> list[dict[str, Any]]:
    """Imports every `*.ply` directly in `src_dir` as the scene `dest_root/<ply stem>`.

    Args:
        on_error: "stop" raises at the first bad file; "skip" records it as `{"scene", "path", "error"}`
            in the returned list and goes on.

    Returns:
        One summary per .ply (see `import_3dgs_ply`), in name order.

    Raises:
        DataError: no .ply files, or (with on_error="stop") any bad file.
    """
    src_dir, dest_root = Path(src_dir), Path(dest_root)
    if dest_root.exists() and not dest_root.is_dir():
        raise DataError(
            f"{dest_root}: is a file, not a folder, got an existing file. Pass the split folder that receives one "
            "scene folder per .ply (the file is left untouched)."
        )
    if on_error not in ("stop", "skip"):
        raise DataError(f"on_error: unknown mode, got {on_error!r}. Use 'stop' or 'skip'.")
    if not src_dir.is_dir():
        raise DataError(
            f"{src_dir}: folder is missing, got no such folder. Point to a folder of 3DGS .ply files."
        )
    plys = sorted(p for p in src_dir.iterdir() if p.suffix.lower() == ".ply" and p.is_file())
    if not plys:
        raise DataError(
            f"{src_dir}: no .ply files, got {len(list(src_dir.iterdir()))} other entries. "
            "Put one 3DGS .ply per scene in the folder (e.g. copy each point_cloud/iteration_*/point_cloud.ply "
            "as <scene>.ply)."
        )
    summaries: list[dict[str, Any]] = []
    for ply in plys:
        try:
            summaries.append(import_3dgs_ply(ply, dest_root / ply.stem, overwrite=overwrite))
        except DataError as err:
            if on_error == "stop":
                raise
            summaries.append({"scene": ply.stem, "path": str(ply), "error": str(err)})
    return summaries
