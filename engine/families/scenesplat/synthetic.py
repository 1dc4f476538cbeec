"""Provides deterministic synthetic Gaussian-splat rooms in two appearance domains, for the demo and tests.

A room is a floor, four walls and a few objects (tables, balls, columns, cone "plants"), sampled as
Gaussians on the surfaces. Every Gaussian is flat along its surface normal (its local z axis is the
normal), so `quat` and `scale` carry geometry, while colour and opacity carry appearance.

The two domains share the geometry generator and differ in appearance:
- "A": warm palette, opaque Gaussians, small scales, `num_points` Gaussians.
- "B": a different palette in which several classes take colours close to another class's colour in
  "A" (floor grey like A's columns, tables white like A's walls, columns brown like A's floor),
  lower and more spread opacities, 1.6x larger scales, and 0.8x as many Gaussians.
A model trained on "A" therefore leans on cues that mislead on "B"; fine-tuning on "B" recovers.

Scene dicts use the on-disk format of data.py (`color` uint8, `opacity` (N,), `segment` int32).
Optional language features: `lang_feat` (N, lang_dim) float16 = the class's row of a fixed random
text-embedding table plus noise, L2-normalised; about 5% of rows are zero with
`valid_feat_mask` False, as SceneSplat's unlabelled Gaussians.

Text-embedding files (`write_text_embeddings`): `<path>.npy` float32 [num_classes, dim], rows
L2-normalised, row i for class i; `<path>.json` = `{"class_names": [...], "dim": dim,
"normalized": true, "source": ...}`. `data.load_text_embeddings` reads both (and SceneSplat's `.pt`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_folder
from engine.errors import DataError
from engine.families.scenesplat.ply_import import write_scene_atomic

SYNTHETIC_CLASSES = ("floor", "wall", "table", "ball", "column", "plant")
DOMAINS = ("A", "B")
WALL_HEIGHT = 2.4
TEXT_TABLE_SEED = 20260101

# Share of the Gaussians per class (floor, wall, table, ball, column, plant).
_CLASS_SHARE = np.array([0.22, 0.28, 0.16, 0.11, 0.11, 0.12])

# Per domain and class: colour mean (RGB 0..255), colour std, opacity Beta(a, b), median scale (m),
# in-plane anisotropy (second axis / first), thickness (normal axis / first).
_APPEARANCE: dict[str, dict[str, Any]] = {
    "A": {
        "color": [
            (150, 105, 65),
            (225, 222, 210),
            (85, 55, 35),
            (205, 40, 40),
            (165, 165, 175),
            (45, 145, 55),
        ],
        "color_std": [26, 18, 22, 30, 20, 30],
        "opacity": [(18, 2), (20, 2), (16, 2), (12, 2), (18, 2), (8, 3)],
        "scale": [0.035, 0.045, 0.022, 0.014, 0.028, 0.010],
        "aniso": [1.0, 0.9, 0.8, 0.9, 0.5, 0.25],
        "thick": [0.12, 0.10, 0.15, 0.3, 0.2, 0.3],
        "density": 1.0,
    },
    "B": {
        "color": [
            (168, 166, 172),
            (205, 180, 140),
            (220, 220, 212),
            (45, 90, 205),
            (145, 100, 60),
            (150, 60, 140),
        ],
        "color_std": [28, 22, 20, 30, 24, 32],
        "opacity": [(5, 3), (6, 3), (5, 2), (4, 3), (6, 2), (3, 3)],
        "scale": [0.035 * 1.6, 0.045 * 1.6, 0.022 * 1.6, 0.014 * 1.6, 0.028 * 1.6, 0.010 * 1.6],
        "aniso": [1.0, 0.9, 0.8, 0.9, 0.5, 0.25],
        "thick": [0.12, 0.10, 0.15, 0.3, 0.2, 0.3],
        "density": 0.8,
    },
}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _plane(rng: np.random.Generator, n: int, origin, u, v, normal) -> tuple[np.ndarray, np.ndarray]:
    """n points on the parallelogram origin + a*u + b*v, a, b in [0, 1]."""
    a, b = rng.random((2, n, 1))
    pts = np.asarray(origin) + a * np.asarray(u) + b * np.asarray(v)
    return pts, np.broadcast_to(np.asarray(normal, dtype=float), (n, 3)).copy()


def _box(rng: np.random.Generator, n: int, center, size, height) -> tuple[np.ndarray, np.ndarray]:
    """n points on a box standing on the floor (top and four sides)."""
    (cx, cy), (sx, sy) = center, size
    x0, y0 = cx - sx / 2, cy - sy / 2
    faces = [
        ((x0, y0, height), (sx, 0, 0), (0, sy, 0), (0, 0, 1)),
        ((x0, y0, 0), (sx, 0, 0), (0, 0, height), (0, -1, 0)),
        ((x0, y0 + sy, 0), (sx, 0, 0), (0, 0, height), (0, 1, 0)),
        ((x0, y0, 0), (0, sy, 0), (0, 0, height), (-1, 0, 0)),
        ((x0 + sx, y0, 0), (0, sy, 0), (0, 0, height), (1, 0, 0)),
    ]
    area = np.array([np.linalg.norm(np.cross(f[1], f[2])) for f in faces])
    counts = rng.multinomial(n, area / area.sum())
    parts = [_plane(rng, c, *f) for c, f in zip(counts, faces)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _sphere(rng: np.random.Generator, n: int, center, radius) -> tuple[np.ndarray, np.ndarray]:
    normal = _unit(rng.standard_normal((n, 3)))
    return np.asarray(center) + radius * normal, normal


def _cylinder(rng: np.random.Generator, n: int, center, radius, height) -> tuple[np.ndarray, np.ndarray]:
    phi = rng.uniform(0, 2 * np.pi, n)
    normal = np.stack([np.cos(phi), np.sin(phi), np.zeros(n)], axis=1)
    pts = np.stack(
        [center[0] + radius * normal[:, 0], center[1] + radius * normal[:, 1], rng.uniform(0, height, n)], 1
    )
    return pts, normal


def _cone(rng: np.random.Generator, n: int, center, radius, height) -> tuple[np.ndarray, np.ndarray]:
    """n points on the side of an upright cone; sqrt makes the density uniform in area."""
    t = np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    r = radius * t
    pts = np.stack([center[0] + r * np.cos(phi), center[1] + r * np.sin(phi), height * (1 - t)], axis=1)
    slope = radius / height
    normal = _unit(np.stack([np.cos(phi), np.sin(phi), np.full(n, slope)], axis=1))
    return pts, normal


def _quat_from_normal(rng: np.random.Generator, normal: np.ndarray) -> np.ndarray:
    """(w, x, y, z) rotations taking the local z axis to `normal`, with a random spin about it, w >= 0."""
    n = len(normal)
    spin = rng.uniform(0, 2 * np.pi, n)
    q_spin = np.stack([np.cos(spin / 2), np.zeros(n), np.zeros(n), np.sin(spin / 2)], axis=1)
    # shortest-arc rotation z -> normal: q = (1 + z.n, z x n), normalised
    z = np.array([0.0, 0.0, 1.0])
    w = 1.0 + normal @ z
    axis = np.cross(np.broadcast_to(z, normal.shape), normal)
    flipped = w < 1e-6
    q_arc = np.concatenate([w[:, None], axis], axis=1)
    q_arc[flipped] = (0.0, 1.0, 0.0, 0.0)
    q_arc = _unit(q_arc)
    aw, ax, ay, az = q_arc.T
    bw, bx, by, bz = q_spin.T
    quat = np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=1,
    )
    return np.where(quat[:, :1] < 0, -quat, quat)


def _place(
    rng: np.random.Generator, room: np.ndarray, radius: float, taken: list[tuple[float, float, float]]
):
    """A floor position at least `radius` from the walls, avoiding earlier objects when it can."""
    for _ in range(50):
        xy = rng.uniform([radius + 0.1, radius + 0.1], room - radius - 0.1)
        if all(np.hypot(xy[0] - x, xy[1] - y) > radius + r for x, y, r in taken):
            break
    taken.append((float(xy[0]), float(xy[1]), radius))
    return xy


def _geometry(rng: np.random.Generator, num_points: int):
    """Samples positions, normals, class ids and instance ids of one room."""
    room = rng.uniform([3.5, 3.0], [5.0, 4.5])
    w, d = room
    counts = np.maximum(rng.multinomial(num_points, _CLASS_SHARE), 4)
    pts, nrm, seg, inst = [], [], [], []
    instance = 0

    def add(p, n, cls):
        nonlocal instance
        pts.append(p)
        nrm.append(n)
        seg.append(np.full(len(p), cls))
        inst.append(np.full(len(p), instance))
        instance += 1

    add(*_plane(rng, counts[0], (0, 0, 0), (w, 0, 0), (0, d, 0), (0, 0, 1)), 0)
    walls = [
        ((0, 0, 0), (w, 0, 0), (0, 1, 0)),
        ((0, d, 0), (w, 0, 0), (0, -1, 0)),
        ((0, 0, 0), (0, d, 0), (1, 0, 0)),
        ((w, 0, 0), (0, d, 0), (-1, 0, 0)),
    ]
    wall_counts = rng.multinomial(counts[1], np.array([w, w, d, d]) / (2 * (w + d)))
    for c, (origin, u, normal) in zip(wall_counts, walls):
        add(*_plane(rng, c, origin, u, (0, 0, WALL_HEIGHT), normal), 1)
    taken: list[tuple[float, float, float]] = []
    num = {2: rng.integers(1, 3), 3: rng.integers(1, 4), 4: rng.integers(1, 3), 5: rng.integers(1, 3)}
    for cls, k in num.items():
        for c in rng.multinomial(counts[cls], np.full(k, 1 / k)):
            if cls == 2:
                size = rng.uniform([0.8, 0.6], [1.4, 0.9])
                xy = _place(rng, room, float(np.hypot(*size)) / 2, taken)
                add(*_box(rng, c, xy, size, rng.uniform(0.7, 0.8)), cls)
            elif cls == 3:
                r = rng.uniform(0.18, 0.32)
                xy = _place(rng, room, r, taken)
                add(*_sphere(rng, c, (xy[0], xy[1], r), r), cls)
            elif cls == 4:
                r = rng.uniform(0.15, 0.25)
                xy = _place(rng, room, r, taken)
                add(*_cylinder(rng, c, xy, r, WALL_HEIGHT), cls)
            else:
                r = rng.uniform(0.18, 0.28)
                xy = _place(rng, room, r, taken)
                add(*_cone(rng, c, xy, r, rng.uniform(0.9, 1.4)), cls)
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(seg), np.concatenate(inst)


def text_embedding_table(
    class_names: tuple[str, ...] | list[str] = SYNTHETIC_CLASSES, dim: int = 16
) -> np.ndarray:
    """A fixed random [num_classes, dim] float32 table with unit rows (a stand-in for SigLIP text features)."""
    table = np.random.default_rng((TEXT_TABLE_SEED, len(class_names), dim)).standard_normal(
        (len(class_names), dim)
    )
    return _unit(table).astype(np.float32)


def _appearance(domain: str, shift: float) -> dict[str, Any]:
    """Domain A's table, or A's table moved a fraction `shift` of the way to B's (1 = B itself)."""
    if domain == "A" or shift == 1.0:
        return _APPEARANCE[domain]
    a, b = _APPEARANCE["A"], _APPEARANCE["B"]
    look: dict[str, Any] = {}
    for key in a:
        va, vb = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        # scales and densities are ratios: interpolate them geometrically
        look[key] = va * (vb / va) ** shift if key in ("scale", "density") else va + shift * (vb - va)
    return look


def generate_room(
    rng: np.random.Generator,
    domain: str = "A",
    num_points: int = 6000,
    lang_dim: int | None = None,
    domain_shift: float = 1.0,
) -> dict[str, np.ndarray]:
    """Generates one synthetic room in the on-disk scene format.

    Args:
        rng: the only source of randomness: the same generator state gives the same room.
        domain: "A" or "B" (see the module docstring).
        num_points: Gaussians in domain "A"; domain "B" has 0.8x as many.
        lang_dim: when set, adds `lang_feat` (N, lang_dim) float16 and `valid_feat_mask` (N,) bool.
        domain_shift: for domain "B", how far its appearance moves from A's (0 = A's look with B's
            rooms, 1 = the full B table); use it to tune how hard the transfer is.

    Returns:
        `coord` (N,3) f32, `color` (N,3) uint8, `opacity` (N,) f32, `quat` (N,4) f32 (w>=0),
        `scale` (N,3) f32, `normal` (N,3) f32, `segment` (N,) int32 (index into SYNTHETIC_CLASSES),
        `instance` (N,) int32, and the optional language arrays.
    """
    if domain not in DOMAINS:
        raise DataError(f"domain: unknown synthetic domain, got {domain!r}. Use 'A' or 'B'.")
    look = _appearance(domain, domain_shift)
    n_target = max(64, int(round(num_points * look["density"])))
    coord, normal, segment, instance = _geometry(rng, n_target)
    n = len(coord)
    coord = coord + rng.normal(0.0, 0.004, coord.shape)
    mean = np.asarray(look["color"], dtype=float)[segment]
    std = np.asarray(look["color_std"], dtype=float)[segment, None]
    color = np.clip(mean + std * rng.standard_normal((n, 3)), 0, 255).astype(np.uint8)
    ab = np.asarray(look["opacity"], dtype=float)[segment]
    opacity = rng.beta(ab[:, 0], ab[:, 1])
    base = np.asarray(look["scale"])[segment] * np.exp(0.25 * rng.standard_normal(n))
    scale = np.stack(
        [base, base * np.asarray(look["aniso"])[segment], base * np.asarray(look["thick"])[segment]], axis=1
    )
    scene = {
        "coord": coord.astype(np.float32),
        "color": color,
        "opacity": opacity.astype(np.float32),
        "quat": _quat_from_normal(rng, normal).astype(np.float32),
        "scale": scale.astype(np.float32),
        "normal": normal.astype(np.float32),
        "segment": segment.astype(np.int32),
        "instance": instance.astype(np.int32),
    }
    if lang_dim is not None:
        table = text_embedding_table(SYNTHETIC_CLASSES, lang_dim)
        feat = _unit(table[segment] + (0.5 / np.sqrt(lang_dim)) * rng.standard_normal((n, lang_dim)))
        valid = rng.random(n) >= 0.05
        feat[~valid] = 0.0
        scene["lang_feat"] = feat.astype(np.float16)
        scene["valid_feat_mask"] = valid
    return scene


def write_text_embeddings(
    path: str | Path, class_names=SYNTHETIC_CLASSES, dim: int = 16
) -> tuple[Path, Path]:
    """Writes the synthetic zero-shot text embeddings: `<path>.npy` [C, dim] float32 and `<path>.json`.

    Returns:
        The .npy path and the .json path.
    """
    path = Path(path).with_suffix(".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, text_embedding_table(tuple(class_names), dim), allow_pickle=False)
    names_path = path.with_suffix(".json")
    names_path.write_text(
        json.dumps(
            {
                "class_names": list(class_names),
                "dim": dim,
                "normalized": True,
                "source": "lora3d synthetic table",
            },
            indent=2,
        )
    )
    return path, names_path


def write_synthetic_dataset(
    root: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    domain: str = "A",
    seed: int = 0,
    num_points: int = 6000,
    lang_dim: int | None = None,
    overwrite: bool = False,
    domain_shift: float = 1.0,
) -> dict[str, Any]:
    """Writes a synthetic dataset `root/{train,val}/scene_XXXX/*.npy`, all at once.

    The dataset is built in a hidden sibling folder and renamed to `root`, so `root` is either
    complete or absent. Scene i of a split comes from `default_rng((seed, split, i, domain))`.
    Also writes `root/dataset.json` (classes, domain, seed, counts) and, with `lang_dim`,
    `root/text_embeddings.npy` + `.json`.

    Returns:
        The contents of dataset.json.

    Raises:
        DataError: `root` exists and `overwrite` is False.
    """
    root = Path(root)
    if domain not in DOMAINS:
        raise DataError(f"domain: unknown synthetic domain, got {domain!r}. Use 'A' or 'B'.")
    if root.exists() and not overwrite:
        raise DataError(
            f"{root}: folder already exists, got an existing path. Choose another root or pass overwrite=True."
        )
    with atomic_folder(root) as tmp:
        counts = {"train": num_train, "val": num_val}
        points: dict[str, list[int]] = {}
        for split_id, (split, count) in enumerate(counts.items()):
            points[split] = []
            for i in range(count):
                rng = np.random.default_rng((seed, split_id, i, DOMAINS.index(domain)))
                scene = generate_room(rng, domain, num_points, lang_dim, domain_shift)
                write_scene_atomic(scene, tmp / split / f"scene_{i:04d}")
                points[split].append(len(scene["coord"]))
        info = {
            "classes": list(SYNTHETIC_CLASSES),
            "domain": domain,
            "seed": seed,
            "num_points": num_points,
            "scenes": counts,
            "points": points,
            "lang_dim": lang_dim,
            "domain_shift": domain_shift if domain == "B" else 0.0,
        }
        if lang_dim is not None:
            write_text_embeddings(tmp / "text_embeddings.npy", SYNTHETIC_CLASSES, lang_dim)
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
    return info
