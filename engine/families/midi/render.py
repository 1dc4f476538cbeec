"""Provides a numpy software rasteriser that renders a scene image and its instance-id map (no OpenGL).

The camera looks at the origin from a point on a sphere (y is up, as in glTF and TripoSG meshes):
elevation is the angle above the xz-plane, azimuth turns about +y starting at +z. Triangles are filled
with a z-buffer on inverse depth (which is linear in screen space, so the depth test is exact under
perspective) and flat Lambert shading in one colour per instance over a white background, as MIDI's
renders use. Id 0 is the background and instance ``i`` (0-based, in the given order) is written as
``i + 1`` -- MIDI's ``semantic_XXXX.png`` convention.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

__all__ = ["CameraPose", "instance_colors", "render_scene", "sample_camera"]

# Fragments evaluated per vectorised batch; bounds peak memory at a few hundred MB of float64.
_MAX_FRAGMENTS_PER_BATCH = 2_000_000
_NEAR_PLANE = 1e-3
_AMBIENT = 0.3


@dataclass(frozen=True)
class CameraPose:
    """A camera on a sphere around the origin, looking at it."""

    elevation_deg: float
    """Angle above the floor plane (xz), degrees."""
    azimuth_deg: float
    """Rotation about +y, degrees; 0 looks from +z."""


def sample_camera(rng: np.random.Generator) -> CameraPose:
    """Draw a training camera as MIDI does: elevation U[0, 30) degrees, azimuth U[0, 360) degrees.

    MIDI-3D issue #11 (author): training cameras use elevation 0-30 degrees and azimuth 0-360 degrees.
    """
    return CameraPose(elevation_deg=float(rng.uniform(0.0, 30.0)), azimuth_deg=float(rng.uniform(0.0, 360.0)))


def instance_colors(num_instances: int) -> np.ndarray:
    """Distinct, mid-saturation RGB colours in [0, 1], one per instance, as an array (num_instances, 3)."""
    golden = 0.618033988749895
    colors = [colorsys.hsv_to_rgb((0.08 + i * golden) % 1.0, 0.55, 0.9) for i in range(num_instances)]
    return np.asarray(colors, dtype=np.float64).reshape(num_instances, 3)


def _as_arrays(mesh: trimesh.Trimesh | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, trimesh.Trimesh):
        return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    vertices, faces = mesh
    return np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def _camera_frame(elevation_deg: float, azimuth_deg: float, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the eye position (3,) and the world-to-camera rotation (3, 3) with rows right, up, forward."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    eye = distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -eye / np.linalg.norm(eye)
    world_up = np.array([0.0, 1.0, 0.0])
    if abs(forward @ world_up) > 0.999:  # looking straight down or up: any horizontal "up" will do
        world_up = np.array([0.0, 0.0, -1.0])
    right = np.cross(forward, world_up)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return eye, np.stack([right, up, forward])


def render_scene(
    meshes: Sequence[trimesh.Trimesh | tuple[np.ndarray, np.ndarray]],
    image_size: int = 256,
    elevation_deg: float = 20.0,
    azimuth_deg: float = 30.0,
    distance: float | None = None,
    fov_deg: float = 40.0,
    light_dir: Sequence[float] | None = None,
    colors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render meshes with a z-buffer into an RGB image and an instance-id map.

    Args:
        meshes: instances in id order; each a trimesh.Trimesh or a (vertices (V, 3), faces (F, 3)) pair.
        image_size: output height and width in pixels.
        elevation_deg: camera angle above the xz-plane, degrees.
        azimuth_deg: camera rotation about +y, degrees (0 looks from +z).
        distance: camera distance from the origin; None fits the scene's bounding sphere into the view.
        fov_deg: vertical field of view, degrees.
        light_dir: world direction towards the light; None puts the light above and behind the camera.
        colors: per-instance RGB in [0, 1], shape (num_instances, 3); None uses instance_colors().

    Returns:
        rgb (H, W, 3) uint8 with a white background, and id_map (H, W): 0 for background, i + 1 for
        meshes[i]; uint8 when there are at most 255 instances, else uint16.
    """
    arrays = [_as_arrays(m) for m in meshes]
    num_instances = len(arrays)
    colors = instance_colors(num_instances) if colors is None else np.asarray(colors, dtype=np.float64)
    id_dtype = np.uint8 if num_instances <= 255 else np.uint16
    size = int(image_size)
    rgb = np.full((size, size, 3), 255, dtype=np.uint8)
    id_map = np.zeros((size, size), dtype=id_dtype)
    if num_instances == 0 or all(len(f) == 0 for _, f in arrays):
        return rgb, id_map

    # 1. Gather all triangles with their instance index.
    tri_world = np.concatenate([v[f] for v, f in arrays if len(f)], axis=0)  # (T, 3, 3)
    tri_instance = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, (_, f) in enumerate(arrays) if len(f)])
    half_fov = math.radians(fov_deg) / 2.0
    if distance is None:
        radius = float(np.linalg.norm(tri_world.reshape(-1, 3), axis=1).max())
        distance = max(radius, 1e-6) / math.sin(half_fov) * 1.05
    eye, rotation = _camera_frame(elevation_deg, azimuth_deg, float(distance))

    # 2. Flat Lambert shading from the face normal; two-sided so open meshes show their inside.
    normals = np.cross(tri_world[:, 1] - tri_world[:, 0], tri_world[:, 2] - tri_world[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals / np.where(lengths > 0, lengths, 1.0)
    if light_dir is None:
        light = eye / np.linalg.norm(eye) + np.array([0.3, 1.0, 0.2])
    else:
        light = np.asarray(light_dir, dtype=np.float64)
    light = light / np.linalg.norm(light)
    intensity = _AMBIENT + (1.0 - _AMBIENT) * np.abs(normals @ light)  # (T,)
    tri_rgb = np.clip(colors[tri_instance] * intensity[:, None], 0.0, 1.0)  # (T, 3)

    # 3. Project to pixels; drop triangles touching the near plane (the camera sits outside the scene).
    cam = (tri_world - eye) @ rotation.T  # (T, 3, 3) camera coordinates, z = depth
    keep = (cam[..., 2] > _NEAR_PLANE).all(axis=1) & (lengths[:, 0] > 0)
    cam, tri_instance, tri_rgb = cam[keep], tri_instance[keep], tri_rgb[keep]
    focal = (size / 2.0) / math.tan(half_fov)
    inv_z = 1.0 / cam[..., 2]  # (T, 3)
    px = size / 2.0 + focal * cam[..., 0] * inv_z  # (T, 3) column, pixel centres at k + 0.5
    py = size / 2.0 - focal * cam[..., 1] * inv_z  # (T, 3) row

    # 4. Rasterise in batches of triangles whose bounding boxes share a size class.
    zbuffer = np.zeros(size * size, dtype=np.float64)  # inverse depth; 0 = infinitely far
    owner = np.full(size * size, -1, dtype=np.int64)
    x0 = np.clip(np.floor(px.min(1) - 0.5), 0, size - 1).astype(np.int64)
    x1 = np.clip(np.ceil(px.max(1) - 0.5), 0, size - 1).astype(np.int64)
    y0 = np.clip(np.floor(py.min(1) - 0.5), 0, size - 1).astype(np.int64)
    y1 = np.clip(np.ceil(py.max(1) - 0.5), 0, size - 1).astype(np.int64)
    on_screen = (px.max(1) >= 0) & (px.min(1) <= size) & (py.max(1) >= 0) & (py.min(1) <= size)
    extent = np.maximum(x1 - x0, y1 - y0) + 1
    size_class = np.ceil(np.log2(np.maximum(extent, 1))).astype(np.int64)
    for level in np.unique(size_class[on_screen]):
        box = int(2**level)
        members = np.flatnonzero(on_screen & (size_class == level))
        per_batch = max(1, _MAX_FRAGMENTS_PER_BATCH // (box * box))
        for start in range(0, len(members), per_batch):
            batch = members[start : start + per_batch]
            _rasterise_batch(batch, box, px, py, inv_z, x0, y0, size, zbuffer, owner)

    covered = owner >= 0
    flat_rgb = rgb.reshape(-1, 3)
    flat_rgb[covered] = np.round(tri_rgb[owner[covered]] * 255.0).astype(np.uint8)
    id_map.reshape(-1)[covered] = (tri_instance[owner[covered]] + 1).astype(id_dtype)
    return rgb, id_map


def _rasterise_batch(
    batch: np.ndarray,
    box: int,
    px: np.ndarray,
    py: np.ndarray,
    inv_z: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    size: int,
    zbuffer: np.ndarray,
    owner: np.ndarray,
) -> None:
    """Test a box x box pixel window per triangle and merge the nearest fragments into the buffers."""
    offsets = np.arange(box)
    cols = x0[batch, None, None] + offsets[None, None, :]  # (B, 1, box)
    rows = y0[batch, None, None] + offsets[None, :, None]  # (B, box, 1)
    cx = (cols + 0.5).astype(np.float64)
    cy = (rows + 0.5).astype(np.float64)
    ax, bx, cxv = (px[batch, k, None, None] for k in range(3))
    ay, by, cyv = (py[batch, k, None, None] for k in range(3))
    area = (bx - ax) * (cyv - ay) - (by - ay) * (cxv - ax)  # (B, 1, 1) twice the signed area
    w0 = (bx - cx) * (cyv - cy) - (by - cy) * (cxv - cx)
    w1 = (cxv - cx) * (ay - cy) - (cyv - cy) * (ax - cx)
    w2 = (ax - cx) * (by - cy) - (ay - cy) * (bx - cx)
    safe_area = np.where(area == 0, 1.0, area)
    l0, l1, l2 = w0 / safe_area, w1 / safe_area, w2 / safe_area
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (area != 0) & (cols < size) & (rows < size)
    depth = l0 * inv_z[batch, 0, None, None] + l1 * inv_z[batch, 1, None, None] + l2 * inv_z[batch, 2, None, None]
    tri_index, r_idx, c_idx = np.nonzero(inside)
    if tri_index.size == 0:
        return
    pix = rows[tri_index, r_idx, 0] * size + cols[tri_index, 0, c_idx]
    frag_depth = depth[tri_index, r_idx, c_idx]
    frag_tri = batch[tri_index]
    # Nearest fragment per pixel within the batch: sort by pixel, then by descending inverse depth.
    order = np.lexsort((-frag_depth, pix))
    pix, frag_depth, frag_tri = pix[order], frag_depth[order], frag_tri[order]
    first = np.ones(pix.size, dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    pix, frag_depth, frag_tri = pix[first], frag_depth[first], frag_tri[first]
    nearer = frag_depth > zbuffer[pix]
    zbuffer[pix[nearer]] = frag_depth[nearer]
    owner[pix[nearer]] = frag_tri[nearer]
