"""Provides synthetic multi-instance scenes (primitives on a floor) written as raw scene folders for the demo.

Each scene is 2-5 trimesh primitives resting on the floor plane y = 0 with non-overlapping footprints,
deterministic by seed. Domain "A" is mostly boxes, spheres and cylinders with compact proportions;
domain "B" shifts the distribution towards cones and tori with tall or flat proportions, so a LoRA
fine-tuned on B has something measurable to learn. `write_synthetic_raw_scenes` writes the same raw
layout a user would bring (per-instance .ply meshes + image.png + seg.png), so the demo runs the real
`prepare_dataset` path.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from engine.errors import DataError
from engine.families.midi.render import render_scene, sample_camera

__all__ = ["DOMAINS", "SyntheticScene", "generate_synthetic_scene", "write_synthetic_raw_scenes"]

DOMAINS: dict[str, dict[str, float]] = {
    "A": {"box": 0.35, "sphere": 0.35, "cylinder": 0.2, "cone": 0.05, "torus": 0.05},
    "B": {"box": 0.1, "sphere": 0.05, "cylinder": 0.15, "cone": 0.35, "torus": 0.35},
}
"""Primitive mix per domain (probabilities sum to 1)."""

# (min, max) of the height-to-width ratio per domain: A compact, B tall or flat.
_ASPECT_RANGE = {"A": (0.8, 1.25), "B": (0.4, 2.5)}
_FLOOR_HALF_WIDTH = 1.0
_MAX_PLACEMENT_TRIES = 200


@dataclass
class SyntheticScene:
    """A generated scene: instances in id order (id = index + 1)."""

    names: list[str]
    """Instance names, zero-padded so their sorted order is the id order."""
    kinds: list[str]
    """Primitive type per instance."""
    meshes: list[trimesh.Trimesh]
    """World-space meshes resting on y = 0."""


def _make_primitive(kind: str, width: float, height: float) -> trimesh.Trimesh:
    """Build a primitive with footprint diameter `width` and `height`, centred on the y-axis, bottom at y = 0."""
    radius = width / 2.0
    if kind == "box":
        mesh = trimesh.creation.box(extents=(width, height, width))
    elif kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
        mesh.apply_scale((radius, height / 2.0, radius))
    elif kind == "cylinder":
        mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=24)
    elif kind == "cone":
        mesh = trimesh.creation.cone(radius=radius, height=height, sections=24)
    elif kind == "torus":
        # Lying flat: the tube diameter is the height, the ring spans the footprint.
        minor = min(height, width) / 2.0 * 0.9
        mesh = trimesh.creation.torus(major_radius=radius - minor, minor_radius=minor, major_sections=24, minor_sections=12)
    else:
        raise ValueError(f"unknown primitive {kind!r}")
    # trimesh builds cylinders and cones along +z; stand them up along +y (glTF's up axis).
    if kind in ("cylinder", "cone", "torus"):
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2.0, [1.0, 0.0, 0.0]))
    lo, hi = mesh.bounds
    mesh.apply_translation([-(lo[0] + hi[0]) / 2.0, -lo[1], -(lo[2] + hi[2]) / 2.0])
    return mesh


def generate_synthetic_scene(seed: int, domain: str = "A", num_instances: int | None = None) -> SyntheticScene:
    """Generate one scene of primitives on the floor, deterministic in (seed, domain, num_instances).

    Args:
        seed: random seed.
        domain: "A" or "B" (see DOMAINS).
        num_instances: instances to place; None draws 2-5.

    Raises:
        DataError: on an unknown domain.
    """
    if domain not in DOMAINS:
        raise DataError(f"`domain`: unknown synthetic domain, got {domain!r}. Use one of {sorted(DOMAINS)}.")
    rng = np.random.default_rng([seed, ord(domain)])
    count = int(rng.integers(2, 6)) if num_instances is None else int(num_instances)
    kinds_all = list(DOMAINS[domain])
    probs = np.array([DOMAINS[domain][k] for k in kinds_all])
    lo_aspect, hi_aspect = _ASPECT_RANGE[domain]
    placed: list[tuple[float, float, float]] = []  # (x, z, footprint radius)
    names, kinds, meshes = [], [], []
    for index in range(count):
        kind = str(rng.choice(kinds_all, p=probs))
        width = float(rng.uniform(0.3, 0.6))
        # Log-uniform aspect so tall and flat shapes are equally likely.
        height = width * float(np.exp(rng.uniform(np.log(lo_aspect), np.log(hi_aspect))))
        radius = width / 2.0 * math.sqrt(2.0)  # circumscribes a box footprint too
        for _ in range(_MAX_PLACEMENT_TRIES):
            x, z = rng.uniform(-_FLOOR_HALF_WIDTH + radius, _FLOOR_HALF_WIDTH - radius, size=2)
            if all(math.hypot(x - px, z - pz) > radius + pr + 0.02 for px, pz, pr in placed):
                break
        else:
            continue  # the floor is full; a scene with fewer instances is still valid
        placed.append((float(x), float(z), radius))
        mesh = _make_primitive(kind, width, height)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(float(rng.uniform(0, 2 * math.pi)), [0, 1, 0]))
        mesh.apply_translation([x, 0.0, z])
        names.append(f"{index:02d}_{kind}")
        kinds.append(kind)
        meshes.append(mesh)
    return SyntheticScene(names=names, kinds=kinds, meshes=meshes)


def write_synthetic_raw_scenes(
    root: str | Path, num_scenes: int, domain: str = "A", seed: int = 0, image_size: int = 256
) -> list[Path]:
    """Write raw scene folders `root/scene_XXXX/` with `<name>.ply` per instance, image.png and seg.png.

    The image is rendered by the software rasteriser from a MIDI-style random camera; seg.png holds
    0 for background and i + 1 for the i-th instance in sorted file-name order, as prepare_dataset reads it.

    Returns:
        The scene folders, in order.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for index in range(int(num_scenes)):
        scene_seed = seed * 100_003 + index
        scene = generate_synthetic_scene(scene_seed, domain)
        folder = root / f"scene_{index:04d}"
        if folder.exists():  # a scene from an earlier run may hold more instances than this one
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name, mesh in zip(scene.names, scene.meshes):
            mesh.export(folder / f"{name}.ply")
        # The rasteriser looks at the origin, so centre the view on the scene's bounding box.
        centre = np.mean([m.bounds.mean(axis=0) for m in scene.meshes], axis=0) if scene.meshes else np.zeros(3)
        centred = [(np.asarray(m.vertices) - centre, np.asarray(m.faces)) for m in scene.meshes]
        camera = sample_camera(np.random.default_rng([scene_seed, 7]))
        rgb, id_map = render_scene(centred, image_size=image_size, elevation_deg=camera.elevation_deg, azimuth_deg=camera.azimuth_deg)
        Image.fromarray(rgb).save(folder / "image.png")
        Image.fromarray(id_map.astype(np.uint8)).save(folder / "seg.png")
        folders.append(folder)
    return folders
