"""Tests the synthetic Gaussian-splat rooms: determinism, geometry, domain gap, language features, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.errors import DataError
from engine.families.scenesplat.data import SceneFolderDataset, build_sample, load_scene, load_text_embeddings
from engine.families.scenesplat.synthetic import (
    SYNTHETIC_CLASSES,
    generate_room,
    text_embedding_table,
    write_synthetic_dataset,
    write_text_embeddings,
)
from engine.families.scenesplat.transforms import Collect, build_transforms


def test_same_seed_gives_the_same_room_and_another_seed_a_different_one():
    a = generate_room(np.random.default_rng(42), "A", 2000, lang_dim=8)
    b = generate_room(np.random.default_rng(42), "A", 2000, lang_dim=8)
    c = generate_room(np.random.default_rng(43), "A", 2000, lang_dim=8)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["coord"][:100], c["coord"][:100])


def test_room_has_every_class_in_the_on_disk_format_with_consistent_gaussians():
    room = generate_room(np.random.default_rng(0), "A", 3000)
    n = len(room["coord"])
    assert n == 3000
    assert np.bincount(room["segment"], minlength=6).min() > 100
    assert room["color"].dtype == np.uint8 and room["segment"].dtype == np.int32
    assert room["opacity"].shape == (n,) and room["opacity"].min() >= 0 and room["opacity"].max() <= 1
    np.testing.assert_allclose(np.linalg.norm(room["quat"], axis=1), 1, atol=1e-5)
    assert (room["quat"][:, 0] >= 0).all() and (room["scale"] > 0).all()
    # each Gaussian is flat along its surface normal: local z axis == normal
    z_axis = Rotation.from_quat(room["quat"][:, [1, 2, 3, 0]]).apply([0, 0, 1])
    np.testing.assert_allclose(z_axis, room["normal"], atol=1e-5)
    assert (room["scale"][:, 2] < room["scale"][:, 0]).all()
    floor = room["segment"] == 0
    assert np.abs(room["coord"][floor, 2]).max() < 0.03
    np.testing.assert_allclose(room["normal"][room["segment"] == 1, 2], 0, atol=1e-6)


def _class_stats(domain: str):
    rooms = [generate_room(np.random.default_rng(s), domain, 3000) for s in range(3)]
    seg = np.concatenate([r["segment"] for r in rooms])
    color = np.concatenate([r["color"] for r in rooms]).astype(float)
    opacity = np.concatenate([r["opacity"] for r in rooms])
    scale = np.concatenate([r["scale"] for r in rooms])
    means = np.stack([color[seg == c].mean(0) for c in range(6)])
    return rooms, means, opacity.mean(), np.median(scale[:, 0])


def test_domains_differ_in_colour_opacity_scale_and_density():
    rooms_a, color_a, opacity_a, scale_a = _class_stats("A")
    rooms_b, color_b, opacity_b, scale_b = _class_stats("B")
    assert np.linalg.norm(color_a - color_b, axis=1).min() > 40
    assert opacity_a > 0.8 and opacity_b < 0.7
    assert scale_b / scale_a == pytest.approx(1.6, rel=0.1)
    assert len(rooms_b[0]["coord"]) == pytest.approx(0.8 * len(rooms_a[0]["coord"]), abs=2)
    half = generate_room(np.random.default_rng(0), "B", 3000, domain_shift=0.5)
    assert 0.8 < len(half["coord"]) / 3000 < 1.0


def _features(domain: str, seeds, shift: float = 1.0):
    feats, labels = [], []
    for s in seeds:
        sample = build_sample(generate_room(np.random.default_rng(s), domain, 2500, domain_shift=shift))
        out = Collect(keys=("coord", "segment"))(sample)
        feats.append(out["feat"])
        labels.append(out["segment"])
    return np.concatenate(feats), np.concatenate(labels)


def _miou(pred: np.ndarray, label: np.ndarray) -> float:
    ious = [((pred == c) & (label == c)).sum() / ((pred == c) | (label == c)).sum() for c in range(6)]
    return float(np.mean(ious))


def test_a_classifier_fitted_on_domain_a_transfers_badly_to_b_and_refitting_on_b_recovers():
    x_a, y_a = _features("A", range(3))
    centroids = np.stack([x_a[y_a == c].mean(0) for c in range(6)])

    def predict(x, cent):
        return np.argmin(((x[:, None] - cent[None]) ** 2).sum(-1), axis=1)

    x_av, y_av = _features("A", range(100, 102))
    x_bv, y_bv = _features("B", range(200, 202))
    on_a, on_b = _miou(predict(x_av, centroids), y_av), _miou(predict(x_bv, centroids), y_bv)
    assert on_a > 0.8 and on_b < 0.3
    x_b, y_b = _features("B", range(300, 303))
    refit = np.stack([x_b[y_b == c].mean(0) for c in range(6)])
    assert _miou(predict(x_bv, refit), y_bv) > 0.8
    x_half, y_half = _features("B", range(200, 202), shift=0.3)
    assert on_b < _miou(predict(x_half, centroids), y_half) < on_a


def test_language_features_point_to_their_class_text_embedding(tmp_path):
    room = generate_room(np.random.default_rng(1), "A", 2000, lang_dim=16)
    assert room["lang_feat"].dtype == np.float16 and room["lang_feat"].shape == (2000, 16)
    valid = room["valid_feat_mask"]
    assert 0.9 < valid.mean() < 1.0
    assert not room["lang_feat"][~valid].any()
    table = text_embedding_table(SYNTHETIC_CLASSES, 16)
    pred = np.argmax(room["lang_feat"][valid].astype(np.float32) @ table.T, axis=1)
    assert (pred == room["segment"][valid]).mean() > 0.9
    npy, names_json = write_text_embeddings(tmp_path / "text_embeddings", SYNTHETIC_CLASSES, 16)
    loaded, names = load_text_embeddings(npy)
    np.testing.assert_allclose(loaded, table, atol=1e-6)
    assert names == list(SYNTHETIC_CLASSES)
    assert json.loads(names_json.read_text())["dim"] == 16


def test_written_dataset_is_deterministic_loadable_and_not_overwritten_by_accident(tmp_path):
    info = write_synthetic_dataset(
        tmp_path / "a", num_train=2, num_val=1, domain="B", seed=3, num_points=1500, lang_dim=8
    )
    write_synthetic_dataset(
        tmp_path / "b", num_train=2, num_val=1, domain="B", seed=3, num_points=1500, lang_dim=8
    )
    assert info["scenes"] == {"train": 2, "val": 1} and info["classes"] == list(SYNTHETIC_CLASSES)
    for split, name in (("train", "scene_0000"), ("train", "scene_0001"), ("val", "scene_0000")):
        a, b = load_scene(tmp_path / "a" / split / name), load_scene(tmp_path / "b" / split / name)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    train0 = load_scene(tmp_path / "a" / "train" / "scene_0000")["coord"]
    assert not np.array_equal(train0, load_scene(tmp_path / "a" / "val" / "scene_0000")["coord"])
    assert (tmp_path / "a" / "text_embeddings.npy").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left

    ds = SceneFolderDataset(tmp_path / "a", "train", transforms=build_transforms("train", grid_size=0.05))
    sample = ds[0]
    assert sample["feat"].shape[1] == 11 and "lang_feat" in sample

    with pytest.raises(DataError, match="folder already exists"):
        write_synthetic_dataset(tmp_path / "a", num_train=1, num_val=1)
    write_synthetic_dataset(
        tmp_path / "a", num_train=1, num_val=1, domain="A", num_points=500, overwrite=True
    )
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["domain"] == "A"
    with pytest.raises(DataError, match="domain: unknown synthetic domain, got 'C'"):
        generate_room(np.random.default_rng(0), "C")
