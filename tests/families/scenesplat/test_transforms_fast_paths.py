"""Tests the float32 and single-sort paths of the SceneSplat transforms against plain float64 formulations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.families.scenesplat.data import build_sample
from engine.families.scenesplat.synthetic import generate_room
from engine.families.scenesplat.transforms import CenterShift, GridSample, RandomDropout, _bounds, rotate


@pytest.fixture(scope="module")
def sample():
    return build_sample(generate_room(np.random.default_rng(5), "A", 4000), "room5")


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotate_equals_a_float64_rotation_about_the_box_centre(sample, axis):
    theta = 0.7
    out = rotate(sample, theta, axis)
    vec = np.zeros(3)
    vec["xyz".index(axis)] = theta
    rot = Rotation.from_rotvec(vec)
    coord = sample["coord"].astype(np.float64)
    centre = (coord.min(axis=0) + coord.max(axis=0)) / 2
    np.testing.assert_allclose(out["coord"], rot.apply(coord - centre) + centre, atol=2e-5)
    np.testing.assert_allclose(out["normal"], rot.apply(sample["normal"].astype(np.float64)), atol=1e-5)
    want = (rot * Rotation.from_quat(sample["quat"][:, [1, 2, 3, 0]].astype(np.float64))).as_quat()[:, [3, 0, 1, 2]]
    want = np.where(want[:, :1] < 0, -want, want)
    np.testing.assert_allclose(out["quat"], want, atol=1e-5)
    assert out["coord"].dtype == out["quat"].dtype == np.float32
    assert (out["quat"][:, 0] >= 0).all()


def test_bounds_and_centre_shift_match_numpy(sample):
    lo, hi = _bounds(sample["coord"])
    np.testing.assert_array_equal(lo, sample["coord"].min(axis=0))
    np.testing.assert_array_equal(hi, sample["coord"].max(axis=0))
    out = CenterShift(apply_z=True)(sample)["coord"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.min(axis=0)[2], 0.0, atol=1e-6)
    np.testing.assert_allclose(out.min(axis=0)[:2] + out.max(axis=0)[:2], 0.0, atol=1e-5)


def test_train_grid_sample_draws_every_point_of_a_voxel_and_keeps_input_order():
    # Voxel 0 holds points 0, 2, 4; voxel 1 holds points 1, 3 (grid 1.0).
    coord = np.array([[0.1, 0, 0], [1.2, 0, 0], [0.5, 0.5, 0.5], [1.7, 0.3, 0], [0.9, 0.9, 0.9]], dtype=np.float32)
    sample = {"coord": coord, "segment": np.arange(5)}
    chosen = set()
    for seed in range(60):
        out = GridSample(1.0, mode="train")(sample, rng=np.random.default_rng(seed))
        kept = out["segment"].tolist()
        assert len(set(kept) & {0, 2, 4}) == 1 and len(set(kept) & {1, 3}) == 1 and len(kept) == 2
        assert kept == sorted(kept)
        chosen |= set(kept)
    assert chosen == {0, 1, 2, 3, 4}


def test_dropout_keeps_the_exact_count_in_input_order(sample):
    n = len(sample["coord"])
    numbered = {**sample, "instance": np.arange(n)}
    out = RandomDropout(dropout_ratio=0.2, p=1.0)(numbered, rng=np.random.default_rng(0))
    kept = out["instance"]
    assert len(kept) == int(n * 0.8) and (np.diff(kept) > 0).all()
    np.testing.assert_array_equal(out["coord"], sample["coord"][kept])
    other = RandomDropout(dropout_ratio=0.2, p=1.0)(numbered, rng=np.random.default_rng(1))["instance"]
    assert not np.array_equal(kept, other)
