"""Provides the out-of-memory policy: recognise an allocator failure, halve the micro-batch, keep the samples.

A step that runs out of memory is retried with half the micro-batch and twice the accumulation, so the
effective batch and every step's samples stay the same (`engine.train.batching`); at micro-batch 1 the
run ends with the levers that could still help (`engine.memory.oom.levers_message`).
"""

from __future__ import annotations

import torch

from engine.errors import HardwareError
from engine.families.base import Recipe
from engine.memory.oom import levers_message
from engine.train.state import TrainState

_ALLOCATOR_MESSAGES = (
    "out of memory",  # CUDA ("CUDA out of memory"), HIP, MPS ("MPS backend out of memory"), XPU
    "can't allocate memory",  # torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory"
    "std::bad_alloc",  # a C++ allocation inside an operator (CPU kernels, sparse/spconv helpers)
    "alloc_failed",  # cuBLAS / cuDNN / cuSPARSE: "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"
    "failed to allocate",  # oneDNN and several CUDA extensions
    "unable to allocate",  # numpy in a collate: "Unable to allocate 3.2 GiB for an array"
)


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an allocator failure that a smaller micro-batch might avoid.

    Recognises torch's OutOfMemoryError, Python's MemoryError (numpy's `_ArrayMemoryError` too), and the
    RuntimeError texts of the CPU allocator, C++ `std::bad_alloc` and the CUDA libraries.
    """
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(message in text for message in _ALLOCATOR_MESSAGES)
    return False


def shrink_after_oom(state: TrainState, recipe: Recipe) -> tuple[int, int]:
    """Halves the state's micro-batch after an out-of-memory step; returns the previous split.

    Raises:
        HardwareError: the micro-batch is already 1; the message lists the levers that remain.
    """
    if state.micro_batch == 1:
        raise HardwareError(levers_message(recipe)) from None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the failed step's blocks, so the retry starts from a clean cache
    return state.halve_micro_batch()
