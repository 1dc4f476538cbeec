"""Provides the SceneSplat per-sample transforms (numpy, dict in, dict out) and the standard pipelines.

Each transform is called as `t(sample, rng=None)`. The generator passed at call time wins; without
one a transform draws from the generator it was built with (`seed=`), so a pipeline is reproducible
either way. `Compose` hands one generator to every transform in turn.

Colour arrives in [-1, 1] (data.py maps it from uint8), so the chromatic transforms work in that
space: Pointcept's 0..255 amounts are rescaled by 2/255 and results are clipped to [-1, 1].

Geometric transforms keep the Gaussians consistent with the scene: a rotation rotates `normal` and
`quat` (w >= 0 kept), a flip mirrors both, a scale scales the Gaussian `scale`. SceneSplat's copy of
Pointcept moves only `coord`/`normal`; pass `enable_quat=False` / `enable_gaussian_scale=False` to
reproduce that.

The standard pipelines follow SceneSplat's scannet lang config
(unique1i/SceneSplat@149d7b6:configs/scannet/lang-pretrain-scannet-mcmc-wo-normal-contrastive.py),
without ElasticDistortion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.families.scenesplat.data import normalize_color

# Keys indexed per point by the transforms that select points.
POINT_KEYS = (
    "coord",
    "grid_coord",
    "color",
    "opacity",
    "quat",
    "scale",
    "normal",
    "segment",
    "instance",
    "lang_feat",
    "valid_feat_mask",
)
FEAT_KEYS = ("color", "opacity", "quat", "scale")
_TIE_BITS = 20
"""Random bits appended to voxel keys by GridSample's train mode (ties among ~1M points are rare)."""
Sample = dict[str, Any]


def _bounds(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column minimum and maximum of an (N, D) array.

    numpy reduces `axis=0` of a C-ordered (N, 3) array with a 3-long inner loop, 15x slower than one
    strided reduction per column (60 ms vs 4 ms for 1M points).
    """
    lo = np.array([array[:, i].min() for i in range(array.shape[1])], dtype=array.dtype)
    hi = np.array([array[:, i].max() for i in range(array.shape[1])], dtype=array.dtype)
    return lo, hi


def _select(sample: Sample, index: np.ndarray, keys: Sequence[str] = POINT_KEYS) -> Sample:
    out = dict(sample)
    for key in keys:
        if key in out:
            out[key] = out[key][index]
    return out


class Transform:
    """Base class: holds a fallback generator and picks the call-time one when given."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def _rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        return self.rng if rng is None else rng

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Applies transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Transform], seed: int | None = None) -> None:
        super().__init__(seed)
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        for t in self.transforms:
            sample = t(sample, rng=rng)
        return sample


class CenterShift(Transform):
    """Moves the bounding-box centre to the origin in x, y; in z the minimum when `apply_z` (Pointcept)."""

    def __init__(self, apply_z: bool = True) -> None:
        super().__init__()
        self.apply_z = apply_z

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = sample["coord"]
        lo, hi = _bounds(coord)
        shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] if self.apply_z else 0.0], dtype=coord.dtype)
        return {**sample, "coord": coord - shift}


class RandomDropout(Transform):
    """With probability `p`, drops a `dropout_ratio` fraction of the points."""

    def __init__(self, dropout_ratio: float = 0.2, p: float = 0.2, seed: int | None = None) -> None:
        super().__init__(seed)
        self.dropout_ratio = dropout_ratio
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p:
            return sample
        n = len(sample["coord"])
        keep = max(1, int(n * (1 - self.dropout_ratio)))
        # Draw the (fewer) dropped points and keep the rest in input order: no shuffle, no sort of 1M indices.
        mask = np.ones(n, dtype=bool)
        mask[rng.choice(n, n - keep, replace=False, shuffle=False)] = False
        return _select(sample, np.flatnonzero(mask))


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (.., 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def _w_positive(quat: np.ndarray) -> np.ndarray:
    """Flips rows with w < 0 (q and -q are the same rotation); in place on `quat`, which is returned."""
    np.negative(quat, out=quat, where=quat[:, :1] < 0)
    return quat


class RandomRotate(Transform):
    """With probability `p`, rotates about `axis` through the bounding-box centre.

    Args:
        angle: (low, high) in units of pi, as Pointcept (`(-1, 1)` is a full turn).
        axis: "x", "y" or "z".
        p: probability of rotating.
        enable_quat: also rotate the Gaussians' orientations (`quat` = r * quat).
    """

    def __init__(
        self,
        angle: tuple[float, float] = (-1.0, 1.0),
        axis: str = "z",
        p: float = 0.5,
        enable_quat: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if axis not in ("x", "y", "z"):
            raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
        self.angle = angle
        self.axis = axis
        self.p = p
        self.enable_quat = enable_quat

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p:
            return sample
        theta = rng.uniform(*self.angle) * np.pi
        return rotate(sample, theta, self.axis, self.enable_quat)


def rotate(sample: Sample, theta: float, axis: str = "z", enable_quat: bool = True) -> Sample:
    """Rotates a sample by `theta` radians about `axis` through its bounding-box centre."""
    c, s = np.cos(theta), np.sin(theta)
    i = "xyz".index(axis)
    j, k = [a for a in range(3) if a != i]
    # Right-handed: rotating about x maps y->z, about y maps z->x, about z maps x->y.
    if axis == "y":
        j, k = k, j
    rot = np.eye(3)
    rot[j, j], rot[j, k], rot[k, j], rot[k, k] = c, -s, s, c
    out = dict(sample)
    coord = sample["coord"]
    # One small matmul per array in the arrays' own dtype (float32 for scenes): a 1M-Gaussian scene
    # otherwise spends most of its augmentation time in float64 temporaries.
    lo, hi = _bounds(coord)
    center = ((lo + hi) / 2).astype(coord.dtype)
    out["coord"] = (coord - center) @ rot.T.astype(coord.dtype) + center
    if "normal" in sample:
        out["normal"] = sample["normal"] @ rot.T.astype(sample["normal"].dtype)
    if enable_quat and "quat" in sample:
        r = np.zeros(4)
        r[0] = np.cos(theta / 2)
        r[1 + i] = np.sin(theta / 2)
        # r * q is linear in q: row k of `left` is r * e_k, so r * q = q @ left for row quaternions.
        left = _quat_multiply(r[None, :], np.eye(4)).astype(sample["quat"].dtype)
        out["quat"] = _w_positive(sample["quat"] @ left)
    return out


class RandomScale(Transform):
    """Scales coordinates (and Gaussian scales) by one factor drawn from `scale`."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.9, 1.1),
        enable_gaussian_scale: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.scale = scale
        self.enable_gaussian_scale = enable_gaussian_scale

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        factor = self._rng(rng).uniform(*self.scale)
        out = {**sample, "coord": (sample["coord"] * factor).astype(sample["coord"].dtype)}
        if self.enable_gaussian_scale and "scale" in sample:
            out["scale"] = (sample["scale"] * factor).astype(sample["scale"].dtype)
        return out


class RandomFlip(Transform):
    """Mirrors x and y independently with probability `p` each (about the origin, as Pointcept).

    A mirror is not a rotation, but the mirrored Gaussian covariance F R S^2 R^T F equals the one of
    the rotation F R F, whose quaternion negates the two components other than the mirrored axis.
    """

    _QUAT_SIGN = {0: np.array([1, 1, -1, -1]), 1: np.array([1, -1, 1, -1])}

    def __init__(self, p: float = 0.5, enable_quat: bool = True, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = p
        self.enable_quat = enable_quat

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        out = dict(sample)
        for axis in (0, 1):
            if rng.random() >= self.p:
                continue
            out = flip(out, axis, self.enable_quat)
        return out


def flip(sample: Sample, axis: int, enable_quat: bool = True) -> Sample:
    """Mirrors a sample's coordinates (and normals, quaternions) along `axis` (0 = x, 1 = y)."""
    out = dict(sample)
    for key in ("coord", "normal"):
        if key in out:
            array = out[key].copy()
            array[:, axis] = -array[:, axis]
            out[key] = array
    if enable_quat and "quat" in out:
        out["quat"] = (out["quat"] * RandomFlip._QUAT_SIGN[axis]).astype(out["quat"].dtype)
    return out


class RandomJitter(Transform):
    """Adds Gaussian noise of std `sigma` (clipped to +-`clip`) to the coordinates."""

    def __init__(self, sigma: float = 0.005, clip: float = 0.01, seed: int | None = None) -> None:
        super().__init__(seed)
        self.sigma = sigma
        self.clip = clip

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = sample["coord"]
        noise = self._rng(rng).standard_normal(coord.shape, dtype=np.float32)
        noise *= self.sigma
        np.clip(noise, -self.clip, self.clip, out=noise)
        return {**sample, "coord": (coord + noise).astype(coord.dtype, copy=False)}


class ChromaticAutoContrast(Transform):
    """With probability `p`, stretches each colour channel to span [-1, 1] and blends with the original.

    The blend factor is drawn from [0, 1) unless `blend_factor` fixes it.
    """

    def __init__(self, p: float = 0.2, blend_factor: float | None = None, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = p
        self.blend_factor = blend_factor

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p:
            return sample
        color = sample["color"]
        lo, hi = (b[None, :] for b in _bounds(color))
        stretched = (color - lo) * (2.0 / np.maximum(hi - lo, 1e-6)) - 1.0
        blend = rng.random() if self.blend_factor is None else self.blend_factor
        out = (1 - blend) * color + blend * stretched
        return {**sample, "color": np.clip(out, -1, 1).astype(color.dtype)}


class ChromaticTranslation(Transform):
    """With probability `p`, shifts all colours by one random offset in +-`ratio` * 2 (full range is 2)."""

    def __init__(self, p: float = 0.95, ratio: float = 0.05, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = p
        self.ratio = ratio

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p:
            return sample
        color = sample["color"]
        shift = ((rng.random((1, 3)) - 0.5) * 2 * 2 * self.ratio).astype(color.dtype)
        out = color + shift
        return {**sample, "color": np.clip(out, -1, 1, out=out)}


class ChromaticJitter(Transform):
    """With probability `p`, adds per-point noise of std `std` * 2 (Pointcept's std is of the 0..255 range)."""

    def __init__(self, p: float = 0.95, std: float = 0.005, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = p
        self.std = std

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p:
            return sample
        color = sample["color"]
        noise = rng.standard_normal(color.shape, dtype=np.float32)
        noise *= self.std * 2
        noise += color
        return {**sample, "color": np.clip(noise, -1, 1, out=noise).astype(color.dtype, copy=False)}


class NormalizeColor(Transform):
    """Maps stored colours to [-1, 1] as `data.normalize_color` does (uint8: `color / 127.5 - 1`).

    Samples from `SceneFolderDataset` are already in [-1, 1]; use this only on raw `load_scene` output.
    """

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return {**sample, "color": normalize_color(sample["color"])}


class GridSample(Transform):
    """Keeps one point per voxel of edge `grid_size` and adds `grid_coord`.

    `grid_coord = floor(coord / grid_size) - min` over the scene (Pointcept `return_grid_coord`).
    In "train" mode the kept point of each voxel is drawn at random; in "val"/"test" mode it is the
    point with the lowest index, so the result is deterministic. Kept points stay in input order.
    With `return_inverse`, `inverse` (N,) int64 gives, for every input point, the output row of its
    voxel's kept point (Pointcept's `return_inverse`): `output[key][inverse]` carries per-voxel values
    back to every input point.
    """

    def __init__(
        self,
        grid_size: float = 0.02,
        mode: str = "train",
        keys: Sequence[str] = POINT_KEYS,
        seed: int | None = None,
        return_inverse: bool = False,
    ) -> None:
        super().__init__(seed)
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        self.grid_size = grid_size
        self.mode = mode
        self.keys = tuple(keys)
        self.return_inverse = return_inverse

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        grid, key = voxel_keys(sample["coord"], self.grid_size)
        if self.mode == "train" and int(key.max()) < 1 << (62 - _TIE_BITS):
            # Random point per voxel: sort voxel keys with random low bits appended (one int64 argsort,
            # 3x faster than lexsort on 1M points); equal draws are broken arbitrarily.
            ties = self._rng(rng).integers(0, 1 << _TIE_BITS, len(key), dtype=np.int64)
            order = np.argsort((key << _TIE_BITS) | ties)
        elif self.mode == "train":
            order = np.lexsort((self._rng(rng).random(len(key)), key))
        else:
            order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = sorted_key[1:] != sorted_key[:-1]
        keep = np.zeros(len(order), dtype=bool)
        keep[order[first]] = True
        index = np.flatnonzero(keep)  # input order, without sorting the kept indices
        out = _select(sample, index, self.keys)
        # min over the kept points equals the min over all points: every voxel keeps one point.
        out["grid_coord"] = grid[index]
        if self.return_inverse:
            # Voxel v (in key order) keeps point order[first][v], which sits at row rank(that point)
            # of the output; every point of voxel v maps to that row.
            row = np.cumsum(keep) - 1
            inverse = np.empty(len(order), dtype=np.int64)
            inverse[order] = row[order[first]][np.cumsum(first) - 1]
            out["inverse"] = inverse
        return out


def voxel_keys(coord: np.ndarray, grid_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The voxel of every point: `grid` (N, 3) int64 from 0 and one int64 `key` per voxel (row-major).

    `grid = floor(coord / grid_size) - min` (the scene's grid, Pointcept's `grid_coord`).
    """
    grid = np.floor(coord.astype(np.float64) / grid_size).astype(np.int64)
    lo, hi = _bounds(grid)
    grid -= lo
    dims = hi - lo + 1
    key = (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]
    return grid, key


class SphereCrop(Transform):
    """Keeps the `point_max` points nearest to a centre when a scene has more.

    The centre is a random point in "random" mode and the bounding-box centre in "center" mode
    (deterministic). Kept points stay in input order.
    """

    def __init__(self, point_max: int = 80000, mode: str = "random", seed: int | None = None) -> None:
        super().__init__(seed)
        if mode not in ("random", "center"):
            raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
        self.point_max = point_max
        self.mode = mode

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = sample["coord"]
        n = len(coord)
        if n <= self.point_max:
            return sample
        if self.mode == "random":
            center = coord[self._rng(rng).integers(n)]
        else:
            lo, hi = _bounds(coord)
            center = (lo + hi) / 2
        dist = np.sum((coord - center) ** 2, axis=1)
        index = np.sort(np.argsort(dist, kind="stable")[: self.point_max])
        return _select(sample, index)


class Collect(Transform):
    """Builds the model input: `feat` (N, C) float32 from `feat_keys` in order, plus the listed keys.

    Args:
        keys: always copied (must be present).
        feat_keys: concatenated into `feat`; SceneSplat's order gives color(3), opacity(1), quat(4), scale(3).
        optional_keys: copied when present.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("coord", "grid_coord", "segment"),
        feat_keys: Sequence[str] = FEAT_KEYS,
        optional_keys: Sequence[str] = ("name", "instance", "lang_feat", "valid_feat_mask"),
    ) -> None:
        super().__init__()
        self.keys = tuple(keys)
        self.feat_keys = tuple(feat_keys)
        self.optional_keys = tuple(optional_keys)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        n = len(sample["coord"])
        out = {key: sample[key] for key in self.keys}
        out.update({key: sample[key] for key in self.optional_keys if key in sample})
        parts = [np.asarray(sample[key], dtype=np.float32).reshape(n, -1) for key in self.feat_keys]
        out["feat"] = np.concatenate(parts, axis=1)
        return out


def build_transforms(
    split: str,
    grid_size: float = 0.02,
    point_budget: int | None = None,
    augment: bool = True,
    feat_keys: Sequence[str] = FEAT_KEYS,
    seed: int | None = None,
) -> Compose:
    """Builds SceneSplat's standard pipeline for a split.

    Args:
        split: "train" (random voxel point, random crop, augmentations when `augment`) or
            "val"/"test" (deterministic voxel point and centre crop, no augmentation).
        grid_size: voxel edge in metres.
        point_budget: keep at most this many points per scene after voxelisation; None keeps all.
        augment: apply the train augmentations (ignored for val/test).
        feat_keys: channels of `feat`, in order.
        seed: seed of the fallback generator (a generator passed at call time wins).
    """
    augmentations = [
        RandomDropout(dropout_ratio=0.2, p=0.2),
        RandomRotate(angle=(-1, 1), axis="z", p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", p=0.5),
        RandomScale(scale=(0.9, 1.1)),
        RandomFlip(p=0.5),
        RandomJitter(sigma=0.005, clip=0.01),
        ChromaticAutoContrast(p=0.2),
        ChromaticTranslation(p=0.95, ratio=0.05),
        ChromaticJitter(p=0.95, std=0.005),
    ]
    return scene_pipeline(split, grid_size, point_budget, augmentations if augment else [],
                          [Collect(feat_keys=feat_keys)], seed)


def scene_pipeline(
    split: str,
    grid_size: float,
    point_budget: int | None,
    augmentations: Sequence[Transform],
    finish: Sequence[Transform],
    seed: int | None = None,
) -> Compose:
    """Pointcept's semseg pipeline shape: centre (with z), augment (train only), voxelise, crop, centre, finish.

    Args:
        split: "train" (random voxel point, random crop, `augmentations`) or "val"/"test"
            (deterministic voxel point and centre crop, no augmentation).
        grid_size: voxel edge in metres.
        point_budget: keep at most this many points per scene after voxelisation; None keeps all.
        augmentations: the train augmentations, in order (the family's config).
        finish: the last steps (colour mapping, `Collect`).
        seed: seed of the fallback generator (a generator passed at call time wins).
    """
    train = split == "train"
    steps: list[Transform] = [CenterShift(apply_z=True)]
    if train:
        steps += augmentations
    steps.append(GridSample(grid_size=grid_size, mode="train" if train else "val"))
    if point_budget is not None:
        steps.append(SphereCrop(point_max=point_budget, mode="random" if train else "center"))
    steps += [CenterShift(apply_z=False), *finish]
    return Compose(steps, seed=seed)
