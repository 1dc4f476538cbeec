"""Shared fixtures: the toy family for engine tests, profile writers, a clean accelerate state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import tests.toy_family  # noqa: F401  (registers the `toy` family)

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LORA3D_PLUGINS", "tests.toy_family")
# Child processes (CLI tests, benchmarks) inherit the plugin setting, so they must be able to import it too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
torch.set_num_threads(min(2, torch.get_num_threads()))


def toy_profile_dict(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1,
        "name": "toy",
        "model": {"family": "toy", "task": "regress"},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 6, "batch_size": 2, "grad_accum": 2, "lr": 0.05, "warmup_steps": 1,
                  "checkpoint_every": 2, "keep_last": 10},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


@pytest.fixture
def write_profile(tmp_path):
    def write(data: dict[str, Any], name: str = "profile.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
