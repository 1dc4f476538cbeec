"""Writers of small valid inputs in their real on-disk formats, which the catalogue then breaks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import plyfile

from engine.families.scenesplat.ply_import import REQUIRED_PROPERTIES


def write_3dgs_ply(path: Path, n: int = 16, extra: tuple[str, ...] = ("nx", "ny", "nz", "f_rest_0"),
                   drop: tuple[str, ...] = (), values: dict[str, float] | None = None, text: bool = False) -> Path:
    """An INRIA 3DGS .ply with `n` Gaussians (float32 properties, seeded)."""
    names = [p for p in (*REQUIRED_PROPERTIES, *extra) if p not in drop]
    data = np.zeros(n, dtype=[(name, "f4") for name in names])
    rng = np.random.default_rng(0)
    for name in names:
        data[name] = rng.normal(size=n).astype(np.float32)
    for name, value in (values or {}).items():
        data[name][0] = value
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], text=text).write(str(path))
    return path


def write_scene(folder: Path, n: int = 32) -> Path:
    """A valid SceneSplat scene folder with labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "coord.npy", rng.uniform(0, 2, (n, 3)).astype(np.float32))
    np.save(folder / "color.npy", rng.integers(0, 255, (n, 3)).astype(np.uint8))
    np.save(folder / "opacity.npy", rng.uniform(size=n).astype(np.float32))
    quat = rng.normal(size=(n, 4)).astype(np.float32)
    np.save(folder / "quat.npy", quat / np.linalg.norm(quat, axis=1, keepdims=True))
    np.save(folder / "scale.npy", rng.uniform(0.005, 0.05, (n, 3)).astype(np.float32))
    np.save(folder / "segment.npy", rng.integers(0, 6, n).astype(np.int64))
    return folder


def folder_digest(folder: Path) -> str:
    """One hash over every file's relative path and bytes under `folder` ("" when it does not exist)."""
    if not folder.exists():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
