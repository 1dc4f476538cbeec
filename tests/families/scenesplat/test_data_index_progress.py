"""Tests the progress messages SceneFolderDataset gives while it indexes a split."""

from __future__ import annotations

import logging

import numpy as np

from engine.families.scenesplat import data as data_module
from engine.families.scenesplat.data import SceneFolderDataset
from engine.families.scenesplat.ply_import import write_scene_atomic


def _root(tmp_path, scenes: int = 4):
    rng = np.random.default_rng(0)
    for i in range(scenes):
        n = 50
        write_scene_atomic({
            "coord": rng.uniform(0, 1, (n, 3)).astype(np.float32),
            "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "opacity": rng.random(n).astype(np.float32),
            "quat": rng.standard_normal((n, 4)).astype(np.float32),
            "scale": rng.uniform(0.01, 0.1, (n, 3)).astype(np.float32),
        }, tmp_path / "data" / "train" / f"scene_{i}")
    return tmp_path / "data"


def test_slow_indexing_reports_progress_and_a_summary(tmp_path, monkeypatch):
    root = _root(tmp_path)
    (root / "train" / "scene_2" / "scale.npy").write_bytes(b"\x93NUMPY broken")
    monkeypatch.setattr(data_module, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(data_module, "PROGRESS_EVERY_S", 0.0)
    messages: list[str] = []
    ds = SceneFolderDataset(root, "train", on_error="skip", progress=messages.append)
    assert len(ds.scenes) == 3
    where = str(root / "train")
    assert messages[:4] == [f"{where}: indexing scene folders, {i}/4 checked (0 s)" for i in range(1, 5)]
    assert messages[-1].startswith(f"{where}: indexed 3 scene folders in ") and messages[-1].endswith("(1 skipped)")


def test_fast_indexing_is_quiet_and_default_goes_to_the_log(tmp_path, monkeypatch, caplog):
    root = _root(tmp_path, scenes=2)
    messages: list[str] = []
    SceneFolderDataset(root, "train", progress=messages.append)
    assert messages == []  # well under PROGRESS_AFTER_S
    monkeypatch.setattr(data_module, "PROGRESS_AFTER_S", 0.0)
    with caplog.at_level(logging.INFO, logger="engine.families.scenesplat.data"):
        SceneFolderDataset(root, "train")
    assert any("indexed 2 scene folders" in r.getMessage() for r in caplog.records)


def test_a_run_says_how_its_split_was_indexed_and_what_was_skipped(tmp_path, monkeypatch):
    """The dataset logs; while the trainer sets a run up, those records are events too (dashboard, watch)."""
    from engine.train.events import read_events
    from engine.train.trainer import train
    from tests.families.scenesplat.tiny_scenesplat import tiny_profile
    from tests.malformed.builders import write_scene

    root = tmp_path / "data"
    for i in range(3):
        write_scene(root / "train" / f"scene_{i}", n=300)
    write_scene(root / "val" / "scene_v", n=300)
    (root / "train" / "scene_1" / "scale.npy").write_bytes(b"\x93NUMPY broken")
    monkeypatch.setattr(data_module, "PROGRESS_AFTER_S", 0.0)
    recipe = tiny_profile(tmp_path, model={"num_classes": 6}, data={"root": str(root), "on_error": "skip"},
                          train={"max_steps": 1})
    assert train(recipe).status == "completed"
    messages = [e["message"] for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "info"]
    train_index = [m for m in messages if m.startswith(f"{root / 'train'}: indexed 2 scene folders in ")]
    assert train_index and train_index[0].endswith("(1 skipped)")
    assert any(m.startswith(f"{root / 'val'}: indexed 1 scene folders") for m in messages)


def test_skipped_scenes_are_said_even_when_indexing_is_fast(tmp_path):
    root = _root(tmp_path, scenes=3)
    (root / "train" / "scene_0" / "scale.npy").write_bytes(b"\x93NUMPY broken")
    messages: list[str] = []
    SceneFolderDataset(root, "train", on_error="skip", progress=messages.append)
    assert len(messages) == 1 and ": indexed 2 scene folders in " in messages[0] and messages[0].endswith("(1 skipped)")
