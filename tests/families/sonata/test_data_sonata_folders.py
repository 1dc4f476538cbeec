"""Sonata's data: Pointcept's ScanNet-style folders and SceneSplat's (with normals), the 9-channel input,
and `lora3d data-check`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from tiny_sonata import tiny_profile_data, write_scannet_folders

from engine.cli import main as cli_main
from engine.errors import DataError
from engine.families.scenesplat.synthetic import write_synthetic_dataset
from engine.families.sonata.data import PointFolderDataset, build_point_sample, load_point_scene
from engine.families.sonata.transforms import build_sonata_transforms


def test_scannet_folder_becomes_sonatas_nine_channels(tmp_path):
    root = write_scannet_folders(tmp_path / "scannet", num_train=1, num_val=0)
    folder = root / "train" / "scene0000_00"
    raw = {k: np.load(folder / f"{k}.npy") for k in ("coord", "color", "normal", "segment20")}
    sample = build_point_sample(load_point_scene(folder), folder.name, "segment20", folder)
    # a voxel far below the point spacing keeps every point, in input order
    out = build_sonata_transforms("val", grid_size=1e-4)(sample, rng=np.random.default_rng(0))
    feat, coord = out["feat"], out["coord"]
    assert feat.shape == (len(raw["coord"]), 9) and feat.dtype == np.float32
    assert np.array_equal(feat[:, :3], coord)  # coord first, after Pointcept's two CenterShifts
    np.testing.assert_allclose(coord - coord.min(0), raw["coord"] - raw["coord"].min(0), atol=1e-5)
    # colour as Pointcept's NormalizeColor (since v1.6): color / 255, the range Sonata was trained with
    np.testing.assert_allclose(feat[:, 3:6], raw["color"] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(feat[:, 6:], raw["normal"])
    np.testing.assert_array_equal(out["segment"], raw["segment20"])
    assert out["segment"].dtype == np.int64 and set(np.unique(out["segment"])) <= set(range(6))
    assert out["grid_coord"].min() == 0


def test_scenesplat_folder_with_normals_loads_and_without_is_named(tmp_path):
    root = tmp_path / "splats"
    write_synthetic_dataset(root, num_train=1, num_val=0, num_points=300)
    folder = root / "train" / "scene_0000"
    scene = load_point_scene(folder)
    assert set(scene) >= {"coord", "color", "normal", "segment"} and "quat" not in scene
    (folder / "normal.npy").unlink()
    with pytest.raises(DataError, match=r"no `normal.npy`.*SceneSplat scene \(Gaussians\): Sonata also needs"):
        load_point_scene(folder)


def test_bad_files_are_named_with_the_fix(tmp_path):
    root = write_scannet_folders(tmp_path / "scannet", num_train=1, num_val=0, num_points=200)
    folder = root / "train" / "scene0000_00"
    np.save(folder / "normal.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(DataError, match=r"normal.npy: length disagrees with coord.npy"):
        load_point_scene(folder)
    np.save(folder / "normal.npy", np.full((len(np.load(folder / "coord.npy")), 3), np.nan, np.float32))
    with pytest.raises(DataError, match=r"normal.npy: `normal` has NaN or inf values"):
        load_point_scene(folder)


def test_dataset_skips_a_bad_scene_when_asked(tmp_path):
    root = write_scannet_folders(tmp_path / "scannet", num_train=3, num_val=0, num_points=200)
    (root / "train" / "scene0001_00" / "color.npy").unlink()
    ds = PointFolderDataset(root, "train", build_sonata_transforms("train", 0.1), on_error="skip",
                            label_key="segment20")
    assert len(ds) == 2 and ds.skipped[0][0] == "scene0001_00"
    a, b = ds[1], ds[1]  # deterministic per (seed, epoch, index)
    assert np.array_equal(a["feat"], b["feat"])
    ds.set_epoch(1)
    assert not np.array_equal(ds[1]["coord"], a["coord"])


def _profile(tmp_path, root, **data):
    profile = tiny_profile_data(tmp_path, model={"num_classes": 20}, data={"root": str(root), **data})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_data_check_reports_counts_labels_and_problems(tmp_path, capsys):
    root = write_scannet_folders(tmp_path / "scannet", num_train=2, num_val=1, num_points=300)
    assert cli_main(["data-check", str(_profile(tmp_path, root)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenes"] == {"train": 2, "val": 1} and report["labelled_scenes"] == 3 and not report["problems"]
    assert report["label_key"] == "segment20" and set(report["label_histogram"]) <= {str(i) for i in range(6)}

    np.save(root / "val" / "scene0000_00" / "segment20.npy", np.full(300, 25, np.int16)[: len(np.load(
        root / "val" / "scene0000_00" / "coord.npy"))])
    (root / "train" / "scene0001_00" / "normal.npy").unlink()
    assert cli_main(["data-check", str(_profile(tmp_path, root)), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(p[1] == "normal.npy" and "Sonata's input is coord + color + normal" in p[2] for p in problems)
    assert any(p[1] == "segment20.npy" and "labels outside [0, 20), got [25]" in p[2] for p in problems)


def test_data_check_names_the_label_file_the_scenes_have(tmp_path, capsys):
    root = write_scannet_folders(tmp_path / "scannet", num_train=1, num_val=1, num_points=200, label_key="segment200")
    assert cli_main(["data-check", str(_profile(tmp_path, root)), "--json"]) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert "no scene has `segment20.npy`" in problem[2] and "Set `data.label_key: segment200`" in problem[2]
