"""Tests the dataset check: counts, points per scene, label histogram, problems, JSON and rich output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from engine.errors import DataError
from engine.families.scenesplat.data import load_scene
from engine.families.scenesplat.datacheck import scan_dataset
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES, write_synthetic_dataset


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "synth"
    write_synthetic_dataset(root, num_train=3, num_val=2, domain="A", seed=1, num_points=800)
    return root


def test_report_numbers_match_the_generated_scenes(dataset):
    report = scan_dataset(dataset, num_classes=len(SYNTHETIC_CLASSES))
    assert report.ok and report.scenes == {"train": 3, "val": 2}
    expected_hist: dict[int, int] = {}
    for split, count in (("train", 3), ("val", 2)):
        sizes = []
        for i in range(count):
            scene = load_scene(dataset / split / f"scene_{i:04d}")
            sizes.append(len(scene["coord"]))
            for c, k in zip(*np.unique(scene["segment"], return_counts=True)):
                expected_hist[int(c)] = expected_hist.get(int(c), 0) + int(k)
        assert report.points[split] == {
            "min": min(sizes),
            "median": float(np.median(sizes)),
            "max": max(sizes),
            "total": sum(sizes),
        }
    assert report.label_histogram == expected_hist
    assert sorted(report.label_histogram) == list(range(6))
    assert report.labelled_scenes == 5
    json.dumps(report.to_dict())


def test_problems_name_scene_file_and_message_without_stopping_the_scan(dataset):
    bad = dataset / "train" / "scene_0001"
    (bad / "opacity.npy").write_bytes(b"\x93NUMPY junk")
    val0 = dataset / "val" / "scene_0000"
    np.save(val0 / "segment.npy", np.full(len(np.load(val0 / "coord.npy")), 9, np.int32))
    report = scan_dataset(dataset, splits=("train", "val", "test"), num_classes=6)
    assert not report.ok
    files = {(Path(scene).name, file) for scene, file, _ in report.problems}
    assert ("scene_0001", "opacity.npy") in files
    assert ("scene_0000", "segment.npy") in files
    messages = " | ".join(m for _, _, m in report.problems)
    assert "labels outside [0, 6), got [9]" in messages
    assert "split folder is missing" in messages and report.scenes["test"] == 0
    assert report.scenes == {"train": 3, "val": 2, "test": 0}
    assert report.points["train"]["total"] == sum(
        len(np.load(dataset / "train" / f"scene_{i:04d}" / "coord.npy")) for i in (0, 2)
    )
    assert report.to_dict()["ok"] is False

    console = Console(record=True, width=140, color_system=None)
    report.render(console, class_names=list(SYNTHETIC_CLASSES))
    text = console.export_text()
    assert "3 problem(s)" in text and "opacity.npy" in text and "floor" in text
    assert f"{report.points['val']['total']:,}" in text


def test_missing_root_and_unknown_label_key_raise(tmp_path):
    with pytest.raises(DataError, match="dataset root is missing"):
        scan_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="label_key: unknown label file, got 'labels'"):
        scan_dataset(tmp_path, label_key="labels")
