"""Provides the host-RAM estimate of a run (interpreter, model loading, data loader, CPU training) and its check.

The host holds, at its peak: the interpreter with torch (`HOST_BASELINE_BYTES`); the frozen weights,
which load into host memory before they move to a GPU; the data loader's prefetched batches
(`max(1, workers) x prefetch x micro-batch` samples, plus one interpreter per worker process); and on
a CPU run the whole training estimate. The MIDI latent cache lives on disk; its size is reported and
checked against the free disk space of the cache folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.memory.estimate import GIB, MIB, describe_profile, estimate_profile

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
    """Host bytes at the run's peak, by part, and the MIDI latent cache's size on disk."""

    total_bytes: int
    breakdown: dict[str, int]
    cache_bytes: int = 0
    cache_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _sample_bytes(profile: Any, description: Any) -> int:
    """Bytes of one collated sample as the loader holds it."""
    if profile.model.family == "midi":
        k = profile.model.num_instances_per_batch
        per_instance = 2 * 4 * 64 * profile.model.num_tokens  # cached posterior mean + log-variance
        if not profile.data.enable_latent_cache:
            per_instance = 6 * 4 * (profile.data.num_samples or 20480)  # surface points + normals
        image = 3 * 4 * 512 * 512 * 3  # scene, instance and mask images at 512 px
        return int(k * (per_instance + image))
    return int(description.tokens_per_sample * description.input_bytes_per_token)


def _cache_bytes(profile: Any, description: Any) -> tuple[int, Path | None]:
    if profile.model.family != "midi" or not profile.data.enable_latent_cache:
        return 0, None
    from engine.families.midi.latents import default_cache_dir

    cache_dir = Path(profile.data.cache_dir) if profile.data.cache_dir else default_cache_dir() / "midi-latents"
    scenes = profile.data.synthetic_train_scenes + profile.data.synthetic_val_scenes
    if profile.data.root is not None:
        root = Path(profile.data.root)
        splits = [root / s for s in (profile.data.train_split, profile.data.val_split) if s and (root / s).is_dir()]
        folders = splits or ([root] if root.is_dir() else [])
        scenes = sum(1 for folder in folders for p in folder.iterdir() if p.is_dir())
    k = profile.model.num_instances_per_batch
    per_instance = 2 * 4 * 64 * profile.model.num_tokens
    return int(scenes * k * per_instance), cache_dir


def estimate_host_ram(profile: Any, family: Any = None, device: str | None = None) -> HostRamEstimate:
    """The host-RAM peak of `profile` on `device` ("cuda" or "cpu"; None reads the profile)."""
    description = describe_profile(profile, family)
    estimate = estimate_profile(profile, family, device=device, description=description)
    workers = profile.data.num_workers
    sample = _sample_bytes(profile, description)
    loader = max(1, workers) * PREFETCH_FACTOR * profile.train.batch_size * sample
    parts = {
        "interpreter": HOST_BASELINE_BYTES,
        "workers": workers * WORKER_BASELINE_BYTES,
        "data_loader": int(loader),
        # Weights load in fp32 on the host first (and are cast afterwards).
        "weights_loading": 0 if estimate.device == "cpu" else 4 * description.frozen_params,
        "training": estimate.expected_bytes if estimate.device == "cpu" else 0,
    }
    cache, cache_dir = _cache_bytes(profile, description)
    return HostRamEstimate(int(sum(parts.values())), parts, cache, cache_dir)


def check_host_ram(profile: Any, family: Any, hardware: Any) -> list[str]:
    """Warnings when the host would run out of memory (or the latent cache out of disk), each with a fix."""
    device = "cpu" if hardware.cpu_mode or profile.train.device == "cpu" else "cuda"
    try:
        est = estimate_host_ram(profile, family, device)
    except Exception:  # advice only: a family without a usable memory description must not stop a run
        return []
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
                f"`data.cache_dir`: the latent cache needs about {est.cache_bytes / GIB:.1f} GB but {probe_dir} has "
                f"{free / GIB:.1f} GB free. Point `data.cache_dir` at a larger disk or set `data.enable_latent_cache=false`."
            )
    return warnings
