"""Shared pieces of the midi family tests: a tiny MIDI pipeline folder, prepared synthetic scenes, profiles.

Imported by the test modules of this folder (pytest puts the folder on sys.path). The session fixture
`midi_env` builds everything once: a tiny random MIDI pipeline in the real on-disk layout and a few
prepared synthetic scenes (through `prepare_dataset`, as a user's data).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.families.midi.data import synthetic_prepared_scenes
from engine.families.recipe import resolve_recipe
from engine.models.dit.pipeline import build_tiny_pipeline

REPO = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def single_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine spinning threads make them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", name="midi_env")
def midi_env_fixture(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("midi_env")
    base = build_tiny_pipeline(root / "base", seed=0)
    train, val = synthetic_prepared_scenes("B", 4, 2, seed=3, image_size=32, num_samples=256, root=root / "data")
    return {"root": root, "base": base, "data": train[0].parent.parent, "train": train, "val": val}


@pytest.fixture(name="one_thread")
def one_thread_fixture():
    with single_thread():
        yield


def midi_profile_dict(env: dict[str, Path], tmp_path: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1,
        "name": "midi-test",
        "model": {"family": "midi", "task": "flow", "pretrained": str(env["base"]), "num_tokens": 16,
                  "num_instances_per_batch": 3, "mi_blocks": [1]},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"root": str(env["data"]), "cache_dir": str(tmp_path / "cache"), "eval_chamfer_every": 0,
                 "eval_sigmas": [0.3, 0.7]},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 0.01, "device": "cpu", "seed": 0},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def midi_profile(env: dict[str, Path], tmp_path: Path, **sections: Any):
    return resolve_recipe(midi_profile_dict(env, tmp_path, **sections), source="test.yaml")
