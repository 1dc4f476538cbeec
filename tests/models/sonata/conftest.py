"""Runs the PT-v3m2 tests single-threaded: their tensors are tiny, so intra-op threads only add sync cost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    # Scoped to each test and restored afterwards; on a loaded 2-core machine two OpenMP threads made
    # these small forwards up to 40x slower while giving identical numbers.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
