"""Tests the invariants of the SceneSplat transforms: voxel sampling, crops, rigid motions, colour, Collect."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from engine.families.scenesplat.data import build_sample
from engine.families.scenesplat.synthetic import generate_room
from engine.families.scenesplat.transforms import (
    CenterShift,
    ChromaticAutoContrast,
    ChromaticJitter,
    ChromaticTranslation,
    Collect,
    Compose,
    GridSample,
    NormalizeColor,
    RandomDropout,
    RandomFlip,
    RandomJitter,
    RandomRotate,
    RandomScale,
    SphereCrop,
    build_transforms,
    flip,
    rotate,
)


@pytest.fixture(scope="module")
def sample():
    room = generate_room(np.random.default_rng(3), "A", 3000, lang_dim=8)
    return build_sample(room, "room3")


def _covariance(quat: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rot = Rotation.from_quat(quat[:, [1, 2, 3, 0]]).as_matrix()
    return rot @ (scale[:, :, None] ** 2 * np.transpose(rot, (0, 2, 1)))


@pytest.mark.parametrize("grid_size", [0.02, 0.05, 0.2])
def test_grid_sample_keeps_one_point_per_voxel_with_unique_nonnegative_grid_coord(sample, grid_size):
    out = GridSample(grid_size, mode="train")(sample, rng=np.random.default_rng(0))
    voxels = np.floor(sample["coord"].astype(np.float64) / grid_size).astype(np.int64)
    expected = np.floor(out["coord"].astype(np.float64) / grid_size).astype(np.int64) - voxels.min(0)
    np.testing.assert_array_equal(out["grid_coord"], expected)
    assert out["grid_coord"].min() == 0 and out["grid_coord"].dtype == np.int64
    assert len(np.unique(out["grid_coord"], axis=0)) == len(out["coord"])
    assert len(out["coord"]) == len(np.unique(voxels, axis=0))
    # every per-point array was indexed alike
    assert len(out["segment"]) == len(out["lang_feat"]) == len(out["coord"])


def test_grid_sample_val_is_deterministic_and_keeps_the_first_point_of_each_voxel(sample):
    gs = GridSample(0.1, mode="val")
    a = gs(sample, rng=np.random.default_rng(1))
    b = gs(sample, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a["coord"], b["coord"])
    voxels = np.floor(sample["coord"].astype(np.float64) / 0.1).astype(np.int64)
    _, first = np.unique(voxels, axis=0, return_index=True)
    np.testing.assert_array_equal(a["coord"], sample["coord"][np.sort(first)])
    train = GridSample(0.1, mode="train")
    c = train(sample, rng=np.random.default_rng(1))
    d = train(sample, rng=np.random.default_rng(2))
    assert len(c["coord"]) == len(d["coord"]) and not np.array_equal(c["coord"], d["coord"])


@pytest.mark.parametrize("mode", ["random", "center"])
def test_sphere_crop_respects_the_budget_and_keeps_a_ball(sample, mode):
    out = SphereCrop(point_max=500, mode=mode)(sample, rng=np.random.default_rng(0))
    assert len(out["coord"]) == 500 and len(out["segment"]) == 500
    if mode == "center":
        center = (sample["coord"].min(0) + sample["coord"].max(0)) / 2
        inside = np.linalg.norm(out["coord"] - center, axis=1).max()
        kept = {tuple(p) for p in out["coord"]}
        outside = [np.linalg.norm(p - center) for p in sample["coord"] if tuple(p) not in kept]
        assert inside <= min(outside) + 1e-6
        again = SphereCrop(point_max=500, mode=mode)(sample, rng=np.random.default_rng(9))
        np.testing.assert_array_equal(out["coord"], again["coord"])
    small = SphereCrop(point_max=10**6, mode=mode)(sample)
    assert small is sample


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_preserves_distances_and_rotates_normals_and_gaussians(sample, axis):
    sub = {k: (v[:200] if isinstance(v, np.ndarray) else v) for k, v in sample.items()}
    out = rotate(sub, 0.7, axis)
    np.testing.assert_allclose(pdist(out["coord"]), pdist(sub["coord"]), atol=1e-5)
    rot = Rotation.from_euler(axis, 0.7).as_matrix()
    np.testing.assert_allclose(out["normal"], sub["normal"] @ rot.T, atol=1e-6)
    np.testing.assert_allclose(
        _covariance(out["quat"], sub["scale"]),
        rot @ _covariance(sub["quat"], sub["scale"]) @ rot.T,
        atol=1e-6,
    )
    assert (out["quat"][:, 0] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(out["quat"], axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_mirrors_coordinates_normals_and_gaussian_covariances(sample, axis):
    sub = {k: (v[:200] if isinstance(v, np.ndarray) else v) for k, v in sample.items()}
    out = flip(sub, axis)
    mirror = np.eye(3)
    mirror[axis, axis] = -1
    np.testing.assert_allclose(out["coord"], sub["coord"] @ mirror)
    np.testing.assert_allclose(out["normal"], sub["normal"] @ mirror)
    np.testing.assert_allclose(
        _covariance(out["quat"], sub["scale"]),
        mirror @ _covariance(sub["quat"], sub["scale"]) @ mirror,
        atol=1e-6,
    )
    np.testing.assert_allclose(pdist(out["coord"]), pdist(sub["coord"]), atol=1e-5)


def test_random_scale_and_jitter_stay_in_their_ranges(sample):
    scaled = RandomScale((0.9, 1.1))(sample, rng=np.random.default_rng(0))
    factor = scaled["coord"][5, 0] / sample["coord"][5, 0]
    assert 0.9 <= factor <= 1.1
    np.testing.assert_allclose(scaled["coord"], sample["coord"] * factor, rtol=1e-5)
    np.testing.assert_allclose(scaled["scale"], sample["scale"] * factor, rtol=1e-5)
    jittered = RandomJitter(sigma=0.01, clip=0.02)(sample, rng=np.random.default_rng(0))
    delta = np.abs(jittered["coord"] - sample["coord"])
    assert delta.max() <= 0.02 + 1e-6 and delta.mean() > 0.003


def test_chromatic_transforms_keep_colours_in_minus_one_one(sample):
    rng = np.random.default_rng(0)
    dim = {**sample, "color": sample["color"] * 0.5}  # a low-contrast scene, so auto-contrast has work to do
    for t in (
        ChromaticAutoContrast(p=1.0),
        ChromaticTranslation(p=1.0, ratio=0.2),
        ChromaticJitter(p=1.0, std=0.05),
    ):
        out = t(dim, rng=rng)
        assert out["color"].min() >= -1 and out["color"].max() <= 1
        assert not np.array_equal(out["color"], dim["color"])
    stretched = ChromaticAutoContrast(p=1.0, blend_factor=1.0)(dim)
    np.testing.assert_allclose(stretched["color"].min(0), -1, atol=1e-5)
    np.testing.assert_allclose(stretched["color"].max(0), 1, atol=1e-5)
    shift = ChromaticTranslation(p=1.0, ratio=0.05)(dim, rng=rng)["color"] - dim["color"]
    assert np.abs(shift).max() <= 0.1 + 1e-6
    assert np.ptp(shift, axis=0).max() < 1e-6  # one offset for the whole scene


def test_center_shift_centres_xy_and_puts_the_floor_at_zero(sample):
    out = CenterShift(apply_z=True)(sample)
    np.testing.assert_allclose((out["coord"].min(0) + out["coord"].max(0))[:2] / 2, 0, atol=1e-5)
    assert out["coord"][:, 2].min() == pytest.approx(0, abs=1e-6)
    keep_z = CenterShift(apply_z=False)(sample)
    np.testing.assert_allclose(keep_z["coord"][:, 2], sample["coord"][:, 2])


def test_collect_concatenates_feat_in_scenesplat_order(sample):
    gridded = GridSample(0.05, mode="val")(sample)
    out = Collect()(gridded)
    n = len(gridded["coord"])
    assert out["feat"].shape == (n, 11) and out["feat"].dtype == np.float32
    np.testing.assert_array_equal(out["feat"][:, 0:3], gridded["color"])
    np.testing.assert_array_equal(out["feat"][:, 3], gridded["opacity"][:, 0])
    np.testing.assert_array_equal(out["feat"][:, 4:8], gridded["quat"])
    np.testing.assert_array_equal(out["feat"][:, 8:11], gridded["scale"])
    assert {
        "coord",
        "grid_coord",
        "segment",
        "name",
        "instance",
        "lang_feat",
        "valid_feat_mask",
        "feat",
    } == set(out)


def test_seeded_transforms_and_pipelines_are_reproducible(sample):
    a = Compose([RandomRotate(), RandomFlip(), RandomJitter()], seed=5)(sample)
    b = Compose([RandomRotate(), RandomFlip(), RandomJitter()], seed=5)(sample)
    np.testing.assert_array_equal(a["coord"], b["coord"])
    train = build_transforms("train", grid_size=0.05, point_budget=800)
    x = train(sample, rng=np.random.default_rng(11))
    y = train(sample, rng=np.random.default_rng(11))
    z = train(sample, rng=np.random.default_rng(12))
    np.testing.assert_array_equal(x["feat"], y["feat"])
    assert x["feat"].shape[0] <= 800 and not np.array_equal(x["coord"], z["coord"])
    val = build_transforms("val", grid_size=0.05, point_budget=800)
    v1, v2 = val(sample, rng=np.random.default_rng(1)), val(sample, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(v1["feat"], v2["feat"])
    assert len(np.unique(v1["grid_coord"], axis=0)) == len(v1["grid_coord"]) and v1["grid_coord"].min() >= 0


def test_normalize_color_and_dropout_on_raw_scenes():
    room = generate_room(np.random.default_rng(5), "B", 1000)
    out = NormalizeColor()({"coord": room["coord"], "color": room["color"]})
    np.testing.assert_allclose(out["color"], room["color"] / 127.5 - 1, atol=1e-6)
    dropped = RandomDropout(dropout_ratio=0.25, p=1.0)(dict(room), rng=np.random.default_rng(0))
    assert len(dropped["coord"]) == 600 == len(dropped["segment"]) == len(dropped["quat"])
    kept = {tuple(p) for p in room["coord"]}
    assert all(tuple(p) in kept for p in dropped["coord"])
