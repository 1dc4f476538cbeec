"""Tests SceneSplat scene-folder loading, validation errors, the dataset's skip mode and collation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import DataError
from engine.families.scenesplat.data import (
    SceneFolderDataset,
    build_sample,
    collate_scenes,
    load_scene,
    load_text_embeddings,
    normalize_color,
    normalize_quat,
)
from engine.families.scenesplat.ply_import import write_scene_atomic
from engine.families.scenesplat.synthetic import generate_room
from engine.families.scenesplat.transforms import build_transforms


def _scene(n: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "coord": rng.uniform(0, 2, (n, 3)).astype(np.float32),
        "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
        "opacity": rng.random(n).astype(np.float32),
        "quat": rng.standard_normal((n, 4)).astype(np.float32),
        "scale": rng.uniform(0.001, 2.0, (n, 3)).astype(np.float32),
        "segment": rng.integers(-1, 6, n).astype(np.int32),
        "segment20": rng.integers(0, 20, n).astype(np.int32),
    }


def _write(folder: Path, scene: dict[str, np.ndarray]) -> Path:
    write_scene_atomic(scene, folder)
    return folder


def test_load_scene_returns_every_file_and_builds_features_in_scenesplat_ranges(tmp_path):
    scene = _scene()
    folder = _write(tmp_path / "s0", scene)
    loaded = load_scene(folder)
    assert set(loaded) == set(scene)
    np.testing.assert_array_equal(loaded["color"], scene["color"])

    sample = build_sample(loaded, "s0", folder=folder)
    np.testing.assert_allclose(sample["color"], scene["color"] / 127.5 - 1.0, atol=1e-6)
    assert sample["color"].min() >= -1.0 and sample["color"].max() <= 1.0
    assert sample["opacity"].shape == (300, 1)
    np.testing.assert_allclose(np.linalg.norm(sample["quat"], axis=1), 1.0, atol=1e-6)
    assert (sample["quat"][:, 0] >= 0).all()
    # the unit quaternion is the stored one up to sign
    ref = scene["quat"] / np.linalg.norm(scene["quat"], axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs((sample["quat"] * ref).sum(1)), 1.0, atol=1e-6)
    assert sample["scale"].max() == pytest.approx(1.5)  # ScanNetGSDataset clip(0, 1.5)
    assert sample["segment"].dtype == np.int64
    np.testing.assert_array_equal(sample["segment"], scene["segment"])


def test_label_key_selects_the_file_and_missing_labels_become_ignore(tmp_path):
    scene = _scene()
    loaded = load_scene(_write(tmp_path / "s0", scene))
    np.testing.assert_array_equal(build_sample(loaded, label_key="segment20")["segment"], scene["segment20"])
    del loaded["segment"]
    assert (build_sample(loaded, label_key="segment")["segment"] == -1).all()
    with pytest.raises(DataError, match="label_key: unknown label file, got 'labels'"):
        build_sample(loaded, label_key="labels")


@pytest.mark.parametrize(
    ("color", "expected"),
    [
        (np.array([[0, 255, 51]], np.uint8), [-1.0, 1.0, 51 / 127.5 - 1]),
        (np.array([[0.0, 1.0, 0.5]], np.float32), [-1.0, 1.0, 0.0]),
        (np.array([[0.0, 255.0, 127.5]], np.float32), [-1.0, 1.0, 0.0]),
    ],
)
def test_normalize_color_maps_uint8_and_float_ranges_to_minus_one_one(color, expected):
    np.testing.assert_allclose(normalize_color(color)[0], expected, atol=1e-6)


def test_normalize_color_rejects_out_of_range_floats():
    with pytest.raises(DataError, match=r"color: float colours must lie in \[0, 1\] or \[0, 255\]"):
        normalize_color(np.array([[-3.0, 0.0, 1.0]], np.float32))


def test_normalize_quat_flips_negative_w_and_maps_zero_to_identity():
    quat = normalize_quat(np.array([[-2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(quat, [[1, 0, 0, 0], [1, 0, 0, 0], [0.5, -0.5, -0.5, -0.5]], atol=1e-7)


def _corrupt(folder: Path, kind: str) -> None:
    if kind == "missing":
        (folder / "quat.npy").unlink()
    elif kind == "length":
        np.save(folder / "opacity.npy", np.zeros(299, np.float32))
    elif kind == "shape":
        np.save(folder / "coord.npy", np.zeros((300, 2), np.float32))
    elif kind == "dtype":
        np.save(folder / "coord.npy", np.zeros((300, 3), np.int32))
    elif kind == "label_dtype":
        np.save(folder / "segment.npy", np.zeros(300, np.float32))
    elif kind == "nan":
        coord = np.load(folder / "coord.npy")
        coord[[3, 7]] = np.nan
        np.save(folder / "coord.npy", coord)
    elif kind == "inf":
        scale = np.load(folder / "scale.npy")
        scale[5, 1] = np.inf
        np.save(folder / "scale.npy", scale)
    elif kind == "empty":
        for name, a in _scene().items():
            np.save(folder / f"{name}.npy", a[:0])
    elif kind == "truncated":
        data = (folder / "color.npy").read_bytes()
        (folder / "color.npy").write_bytes(data[: len(data) // 2])
    elif kind == "pickled":
        np.save(folder / "quat.npy", np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True)
    elif kind == "garbage":
        (folder / "scale.npy").write_bytes(b"not an npy file at all")


CORRUPTIONS = [
    ("missing", "required files missing, got no `quat.npy`"),
    ("length", r"opacity.npy: length disagrees with coord.npy \(300 Gaussians\), got 299"),
    ("shape", r"coord.npy: `coord` must be a \(N, 3\) float array, got shape \(300, 2\)"),
    ("dtype", r"coord.npy: `coord` must be a \(N, 3\) float array, got shape \(300, 3\) dtype 'int32'"),
    ("label_dtype", r"segment.npy: `segment` must be a \(N,\) integer array"),
    ("nan", "coord.npy: `coord` has NaN or inf values, got 2 bad rows"),
    ("inf", "scale.npy: `scale` has NaN or inf values, got 1 bad rows"),
    ("empty", "coord.npy: scene is empty, got 0 Gaussians"),
    ("truncated", "color.npy: cannot read the .npy file"),
    ("pickled", "quat.npy: cannot read the .npy file"),
    ("garbage", "scale.npy: cannot read the .npy file"),
]


@pytest.mark.parametrize(("kind", "message"), CORRUPTIONS)
def test_each_corruption_raises_a_data_error_naming_the_scene_file_and_fix(tmp_path, kind, message):
    folder = _write(tmp_path / "scene_bad", _scene())
    _corrupt(folder, kind)
    with pytest.raises(DataError, match=message) as info:
        load_scene(folder)
    text = str(info.value)
    assert str(folder) in text
    assert text.rstrip().endswith(".")
    assert any(word in text for word in ("Re-export", "Remove", "import", "Write", "Save", "needs"))


def test_out_of_range_opacity_and_negative_scale_point_to_the_ply_import(tmp_path):
    scene = _scene()
    scene["opacity"] = scene["opacity"] * 8 - 4  # logits, not sigmoid
    with pytest.raises(DataError, match=r"opacity.npy: opacity must lie in \[0, 1\].*sigmoid"):
        build_sample(load_scene(_write(tmp_path / "a", scene)), folder=tmp_path / "a")
    scene = _scene()
    scene["scale"] = np.log(scene["scale"])
    with pytest.raises(DataError, match="scale.npy: scale must be non-negative.*exp"):
        build_sample(load_scene(_write(tmp_path / "b", scene)), folder=tmp_path / "b")


def _dataset_root(tmp_path: Path, n_good: int = 3) -> Path:
    for i in range(n_good):
        _write(tmp_path / "data" / "train" / f"scene_{i}", _scene(200 + 10 * i, seed=i))
    return tmp_path / "data"


def test_dataset_stop_mode_raises_on_the_first_bad_scene(tmp_path):
    root = _dataset_root(tmp_path)
    _corrupt(root / "train" / "scene_1", "nan")
    ds = SceneFolderDataset(root, "train")
    assert ds[0]["name"] == "scene_0"
    with pytest.raises(DataError, match="scene_1/coord.npy: `coord` has NaN"):
        ds[1]


def test_dataset_skip_mode_records_bad_scenes_and_serves_good_ones(tmp_path):
    root = _dataset_root(tmp_path, n_good=4)
    _corrupt(root / "train" / "scene_1", "truncated")  # caught from the header at construction
    _corrupt(root / "train" / "scene_2", "nan")  # caught when loaded
    ds = SceneFolderDataset(root, "train", on_error="skip")
    assert [s.name for s in ds.scenes] == ["scene_0", "scene_2", "scene_3"]
    assert ds.skipped[0][0] == "scene_1" and "truncated" in ds.skipped[0][1]
    names = [ds[i]["name"] for i in range(len(ds))]
    assert names == ["scene_0", "scene_3", "scene_3"]
    assert [s for s, _ in ds.skipped] == ["scene_1", "scene_2"]
    assert "NaN" in ds.skipped[1][1]


def test_dataset_errors_for_missing_split_and_bad_options(tmp_path):
    root = _dataset_root(tmp_path)
    with pytest.raises(DataError, match=r"data/val: split folder is missing, got folders \['train'\]"):
        SceneFolderDataset(root, "val")
    with pytest.raises(DataError, match="on_error: unknown mode, got 'ignore'"):
        SceneFolderDataset(root, "train", on_error="ignore")
    for folder in (root / "train").iterdir():
        (folder / "coord.npy").unlink()
    with pytest.raises(DataError, match="no usable scene folders, got 3 skipped"):
        SceneFolderDataset(root, "train", on_error="skip")


def test_dataset_loop_and_per_index_reproducible_transforms(tmp_path):
    root = _dataset_root(tmp_path)
    tf = build_transforms("train", grid_size=0.05)
    ds = SceneFolderDataset(root, "train", transforms=tf, loop=2, seed=7)
    assert len(ds) == 6
    a, b = ds[4], ds[4]
    np.testing.assert_array_equal(a["coord"], b["coord"])
    assert a["name"] == "scene_1"
    ds.set_epoch(1)
    assert not np.array_equal(ds[4]["coord"], a["coord"]) or len(ds[4]["coord"]) != len(a["coord"])


def test_collate_builds_pointcept_offsets_and_dtypes(tmp_path):
    tf = build_transforms("val", grid_size=0.05)
    samples = []
    for i, n in enumerate((120, 80, 200)):
        room = generate_room(np.random.default_rng(i), "A", n, lang_dim=8)
        folder = _write(tmp_path / f"r{i}", room)
        samples.append(tf(build_sample(load_scene(folder), f"r{i}")))
    batch = collate_scenes(samples)
    counts = [len(s["coord"]) for s in samples]
    assert batch["offset"].tolist() == np.cumsum(counts).tolist()
    assert batch["offset"].dtype == torch.int64
    assert batch["coord"].dtype == torch.float32 and batch["coord"].shape == (sum(counts), 3)
    assert batch["grid_coord"].dtype == torch.int64
    assert batch["feat"].shape == (sum(counts), 11) and batch["feat"].dtype == torch.float32
    assert batch["segment"].dtype == torch.int64
    assert batch["lang_feat"].dtype == torch.float32 and batch["lang_feat"].shape == (sum(counts), 8)
    assert batch["valid_feat_mask"].dtype == torch.bool
    assert batch["scene_names"] == ["r0", "r1", "r2"]
    # scene 1 occupies rows [offset[0], offset[1])
    torch.testing.assert_close(
        batch["feat"][counts[0] : counts[0] + counts[1]], torch.from_numpy(samples[1]["feat"])
    )

    del samples[1]["lang_feat"]
    with pytest.raises(DataError, match=r"r1: batch mixes scenes with and without `lang_feat`"):
        collate_scenes(samples)


def test_load_text_embeddings_normalises_rows_and_checks_names(tmp_path):
    table = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    np.save(tmp_path / "text.npy", table)
    loaded, names = load_text_embeddings(tmp_path / "text.npy")
    np.testing.assert_allclose(np.linalg.norm(loaded, axis=1), 1.0, atol=1e-6)
    assert names == ["class_0", "class_1", "class_2", "class_3"]
    (tmp_path / "text.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    with pytest.raises(
        DataError, match=r"text.json: class name count disagrees with text.npy \(4 rows\), got 3"
    ):
        load_text_embeddings(tmp_path / "text.npy")
    torch.save(torch.from_numpy(table), tmp_path / "scannet.pt")
    loaded_pt, _ = load_text_embeddings(tmp_path / "scannet.pt")
    np.testing.assert_allclose(loaded_pt, loaded, atol=1e-6)
