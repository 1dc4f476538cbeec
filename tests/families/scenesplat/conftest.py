"""Trained tiny SceneSplat runs shared by the eval and predict tests (each trains once per session)."""

from __future__ import annotations

import pytest
from tiny_scenesplat import train_tiny_run


@pytest.fixture(scope="session")
def semseg_run(tmp_path_factory):
    """A 2-step semseg LoRA run (6 classes, head trained) on a random demo-tiny base."""
    return train_tiny_run(tmp_path_factory.mktemp("semseg"), "semseg")


@pytest.fixture(scope="session")
def lang_run(tmp_path_factory):
    """A 2-step lang LoRA run (32-d features, zero-shot against the synthetic table) on a random base."""
    return train_tiny_run(tmp_path_factory.mktemp("lang"), "lang")
