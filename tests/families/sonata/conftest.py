"""Runs the sonata family tests single-threaded: their models are tiny, so intra-op threads only add sync cost
(on a loaded 2-core machine two threads made these steps several times slower with identical numbers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
