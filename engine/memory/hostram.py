"""Provides the host-RAM estimate of a run (interpreter, model loading, data loader, CPU training) and its check.

The host holds, at its peak: the interpreter with torch (`HOST_BASELINE_BYTES`); the frozen weights,
which load into host memory before they move to a GPU; the data loader's prefetched batches
(`max(1, workers) x prefetch x micro-batch` samples, plus one interpreter per worker process); and on
a CPU run the whole training estimate. A family's disk cache (e.g. precomputed latents) is reported and
checked against the free disk space of the cache folder (the family describes both: `MemoryDescription`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.families.base import Recipe
from engine.hardware import HardwareInfo
from engine.memory.estimate import GIB, MIB, estimate_recipe

HOST_BASELINE_BYTES = 1 * GIB
"""Python, torch and the engine's imports in the training process."""
WORKER_BASELINE_BYTES = 300 * MIB
"""One DataLoader worker process (a forked interpreter, partly shared copy-on-write)."""
PREFETCH_FACTOR = 2
"""torch's default DataLoader prefetch per worker."""
HOST_HEADROOM = 0.9
"""Share of host RAM a run may plan to use; the rest is the OS's and other programs'."""


@dataclass
class HostRamEstimate:
    """Host bytes at the run's peak, by part, and the family's disk cache size."""

    total_bytes: int
    breakdown: dict[str, int]
    cache_bytes: int = 0
    cache_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def estimate_host_ram(recipe: Recipe, device: str | None = None) -> HostRamEstimate:
    """The host-RAM peak of `recipe` on `device` ("cuda" or "cpu"; None reads the profile)."""
    profile = recipe.profile
    description = recipe.family.describe_memory(recipe)
    estimate = estimate_recipe(recipe, device=device, description=description)
    workers = profile.data.num_workers
    sample = description.loader_sample_bytes
    if sample is None:
        sample = description.tokens_per_sample * description.input_bytes_per_token
    loader = max(1, workers) * PREFETCH_FACTOR * profile.train.batch_size * sample
    parts = {
        "interpreter": HOST_BASELINE_BYTES,
        "workers": workers * WORKER_BASELINE_BYTES,
        "data_loader": int(loader),
        # Weights load in fp32 on the host first (and are cast afterwards).
        "weights_loading": 0 if estimate.device == "cpu" else 4 * description.frozen_params,
        "training": estimate.expected_bytes if estimate.device == "cpu" else 0,
    }
    return HostRamEstimate(int(sum(parts.values())), parts, description.disk_cache_bytes, description.disk_cache_dir)


def check_host_ram(recipe: Recipe, hardware: HardwareInfo) -> list[str]:
    """Warnings when the host would run out of memory (or the family's disk cache out of disk), each with a fix."""
    device = "cpu" if hardware.cpu_mode or recipe.profile.train.device == "cpu" else "cuda"
    est = estimate_host_ram(recipe, device)
    warnings = []
    limit = HOST_HEADROOM * hardware.host_ram_bytes
    if est.total_bytes > limit:
        big = max(est.breakdown, key=lambda k: est.breakdown[k])
        fixes = {
            "workers": "lower `data.num_workers`",
            "data_loader": "lower `data.num_workers` or `train.batch_size` (raise `train.grad_accum` to keep the "
            "effective batch)",
            "training": "use a GPU, or lower `train.batch_size` / the points or instances per sample",
            "weights_loading": "use a machine with more RAM, or a smaller base",
            "interpreter": "close other programs",
        }
        parts = ", ".join(f"{k} {v / GIB:.1f} GB" for k, v in est.breakdown.items() if v)
        warnings.append(
            f"host RAM: this run needs about {est.total_bytes / GIB:.1f} GB of the {hardware.host_ram_bytes / GIB:.1f} GB "
            f"here ({parts}). To fit, {fixes[big]}."
        )
    if est.cache_bytes and est.cache_dir is not None:
        probe_dir = est.cache_dir
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
        try:
            free = shutil.disk_usage(probe_dir).free
        except OSError:
            free = None
        if free is not None and est.cache_bytes > free:
            warnings.append(
                f"{est.cache_dir}: this run's disk cache needs about {est.cache_bytes / GIB:.1f} GB but {probe_dir} has "
                f"{free / GIB:.1f} GB free. Point `data.cache_dir` at a larger disk, or turn the cache off."
            )
    return warnings
