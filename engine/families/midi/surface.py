"""Provides the prepared surface of one instance: area-weighted samples with unit normals, saved byte-stably.

Normals come from each mesh's own geometry, rescaled to its own extent, never from the shared scene
frame: a 0.05-unit part beside a 1000-unit one shrinks by 10^4 in that frame, and trimesh's face
normals of such triangles fall under its zero threshold and come back as (0, 0, 0). Degenerate faces
(zero area) get zero weight, so every sample has a unit normal.

`save_surface_npz` writes the same bytes for the same arrays: `numpy.savez` stamps each member with the
current time, so two identical runs would otherwise differ.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import trimesh

__all__ = ["face_unit_normals", "sample_surface", "save_surface_npz"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def face_unit_normals(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Return unit face normals (F, 3) and face weights (F,) proportional to area, zero for degenerate faces.

    Both come from one cross product computed after rescaling the mesh to unit extent, so they neither
    underflow for tiny meshes nor overflow for huge ones. Normals of zero-weight faces are (0, 0, 0).
    """
    triangles = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    lo, hi = triangles.reshape(-1, 3).min(axis=0), triangles.reshape(-1, 3).max(axis=0)
    extent = float((hi - lo).max())
    local = (triangles - lo) / (extent if extent > 0 else 1.0)
    cross = np.cross(local[:, 1] - local[:, 0], local[:, 2] - local[:, 0])  # (F, 3), |cross| = 2 * area
    weight = np.linalg.norm(cross, axis=1)
    normals = np.zeros_like(cross)
    valid = weight > 0
    normals[valid] = cross[valid] / weight[valid, None]
    return normals, weight


def sample_surface(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample `count` points uniformly by area on `mesh`, each with its face's unit normal.

    Args:
        mesh: a triangle mesh with at least one face of non-zero area.
        count: number of samples.
        rng: the generator that draws faces and barycentric positions (seeded by the caller).

    Returns:
        points (count, 3) float64 in the mesh's frame, and normals (count, 3) float64 of unit length.
    """
    normals, weight = face_unit_normals(mesh)
    usable = np.flatnonzero(weight > 0)
    # A mesh of the usable faces only: a zero-weight face can then never be drawn, not even at the
    # boundaries of trimesh's cumulative-weight search.
    usable_mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces[usable], process=False)
    points, face_index = trimesh.sample.sample_surface(usable_mesh, count, face_weight=weight[usable], seed=rng)
    return np.asarray(points, dtype=np.float64), normals[usable[face_index]]


def save_surface_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays as an uncompressed .npz (what `numpy.load` reads) with fixed member timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
