"""Provides the documented memory tiers and the recommendation (rank, batch, checkpointing) they give.

The tiers come from the LoRA setup guide users know: under 12 GB not recommended; 12-16 GB batch 2
with checkpointing and rank 8; 16-24 GB batch 4, checkpointing optional, rank 16; 24 GB and more batch
8+, no checkpointing, rank 32+. Cards report a little under their marketed size (a "24 GB" card has
23.99 GiB), so each boundary sits half a GiB below the marketed number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.hardware import HardwareInfo

GIB = 1024**3
_SLACK_GIB = 0.5


@dataclass(frozen=True)
class TierRecommendation:
    tier: str
    rank: int
    batch_size: int
    gradient_checkpointing: bool
    precision: str
    reason: str
    warning: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def tier_for_memory(total_bytes: int | None, bf16_ok: bool = True) -> TierRecommendation:
    """The tier recommendation for one device of `total_bytes` (None = CPU)."""
    precision = "bf16" if bf16_ok else "fp16"
    if total_bytes is None:
        return TierRecommendation(
            "cpu", 4, 1, False, "no",
            "no GPU: CPU mode (smoke tests and the demo); rank 4, batch 1, fp32",
            warning="training real models on a CPU is very slow; use it for smoke tests and the demo",
        )
    gib = total_bytes / GIB
    if gib < 12 - _SLACK_GIB:
        return TierRecommendation(
            "<12GB", 4, 1, True, precision,
            f"{gib:.1f} GB is under the 12 GB minimum: rank 4, batch 1 and gradient checkpointing to fit at all",
            warning=f"{gib:.1f} GB GPU: below the recommended 12 GB; expect out-of-memory on full-size models",
        )
    if gib < 16 - _SLACK_GIB:
        return TierRecommendation(
            "12-16GB", 8, 2, True, precision,
            f"{gib:.1f} GB (12-16 GB tier): batch 2 with gradient checkpointing on, rank 8",
        )
    if gib < 24 - _SLACK_GIB:
        return TierRecommendation(
            "16-24GB", 16, 4, False, precision,
            f"{gib:.1f} GB (16-24 GB tier): batch 4, rank 16; checkpointing optional (off for speed)",
        )
    batch = 16 if gib >= 48 - _SLACK_GIB else 8
    return TierRecommendation(
        "24GB+", 32, batch, False, precision,
        f"{gib:.1f} GB (24 GB+ tier): batch {batch}, rank 32, no gradient checkpointing",
    )


def recommend_tier(hardware: HardwareInfo) -> TierRecommendation:
    """The recommendation for the smallest visible GPU (all processes must fit), or CPU mode."""
    if hardware.cpu_mode:
        return tier_for_memory(None)
    smallest = min(hardware.gpus, key=lambda g: g.total_bytes)
    cap = smallest.compute_capability
    bf16_ok = cap is None or float(cap) >= 8.0
    return tier_for_memory(smallest.total_bytes, bf16_ok=bf16_ok)
