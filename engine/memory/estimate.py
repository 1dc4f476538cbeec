"""Provides the analytic peak-memory estimate of one training process, from a family's memory description.

The family describes its model at the profile's settings (`Family.describe_memory` returns a
`MemoryDescription`: parameter counts and, per layer, how many activation elements each token leaves
for backward). This module turns that into bytes on the training device:

- weights: frozen parameters in their dtype (`frozen_bytes`) plus frozen parts kept on the device;
- lora: trainable parameters, always fp32 (accelerate keeps master weights in fp32);
- gradients: one fp32 gradient per trainable parameter;
- optimizer: AdamW's two fp32 moments per trainable parameter;
- activations: per layer, `tokens x elements x bytes`, with and without gradient checkpointing, plus
  the widest layer once more for the transient peak of backward (its gradients and recomputation),
  plus the micro-batch's input tensors and index buffers;
- overhead: the CUDA context and allocator fragmentation on a GPU (none on a CPU, where the
  interpreter's own memory is the host-RAM check's business).

Assumptions, stated once:
- Attention runs through SDPA's flash or memory-efficient kernels (CUDA) or the CPU flash kernel, so
  no (seq x seq) score matrix is stored; a layer that stores its scores says so (`scores_stored`).
- Under bf16/fp16 autocast, tensors entering a matmul are saved in half precision; LayerNorm inputs
  and the residual stream stay fp32.
- Gradient checkpointing keeps only each checkpointed layer's inputs (`ckpt_elems` per token) and
  recomputes one layer at a time in backward.

`expected_bytes` is the best guess of the peak; `estimate_bytes` adds the safety margin and is what
the planner compares with the device. A measured correction factor (written by `lora3d plan
--measure --write` into `hardware.measured`) scales the model part of later estimates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engine.families.base import MemoryDescription, Recipe

GIB = 1024**3
MIB = 1024**2

CUDA_CONTEXT_BYTES = 400 * MIB
"""CUDA context plus cuBLAS/cuDNN workspaces of one process (typically 300-500 MB)."""
FRAGMENTATION = 0.08
"""Share of the allocated peak the caching allocator holds on top (reserved minus allocated)."""
SAFETY_MARGIN = 0.10
"""Head-room added to the expected peak before comparing it with the device."""
BREAKDOWN_KEYS = ("weights", "lora", "gradients", "optimizer", "activations", "overhead")

_HALF = {"bf16", "fp16"}


@dataclass
class Estimate:
    """The planner's estimate for one training process at the profile's settings.

    Attributes:
        estimate_bytes: peak bytes including overhead and the safety margin (compare with the device).
        expected_bytes: best guess of the peak, without the safety margin.
        breakdown: bytes per part (`BREAKDOWN_KEYS`).
        tokens: tokens per micro-batch (the family's unit: points, or instances x latent tokens).
        device: "cuda" or "cpu", the device the overhead was counted for.
        correction: measured correction factor applied to the model part (1.0 = none).
        notes: assumptions and defaults the estimate used.
    """

    estimate_bytes: int
    expected_bytes: int
    breakdown: dict[str, int]
    tokens: int
    device: str = "cuda"
    correction: float = 1.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correction_for(profile: Any, device: str) -> float:
    """The measured correction factor stored in `hardware.measured` for this family and device, or 1.0."""
    hardware = getattr(profile, "hardware", None)
    measured = getattr(hardware, "measured", None) if hardware is not None else None
    if not isinstance(measured, dict):
        return 1.0
    if measured.get("family") != profile.model.family or measured.get("device") != device:
        return 1.0
    try:
        factor = float(measured.get("correction", 1.0))
    except (TypeError, ValueError):
        return 1.0
    return factor if 0.2 <= factor <= 5.0 else 1.0


def activation_bytes(
    description: MemoryDescription, micro_batch: int, checkpointing: bool, precision: str, rank: int | None = None
) -> int:
    """Bytes of activations alive at the backward peak for one micro-batch.

    Each layer dict carries `tokens_factor` (tokens at the layer per sample token), `fp32_elems` and
    `half_elems` (saved elements per token: kept fp32, and cast to half under autocast), `ckpt_elems`
    (kept per token when the layer is checkpointed) and `checkpointable`; `rank_elems` x rank more
    half elements come from the LoRA branches.
    """
    rank = description.rank if rank is None else rank
    half_bytes = 2 if precision in _HALF else 4
    tokens = description.tokens_per_sample * micro_batch
    stored = 0.0
    widest = 0.0
    for layer in description.layers:
        n = tokens * float(layer.get("tokens_factor", 1.0))
        full = n * (
            4 * layer.get("fp32_elems", 0.0)
            + half_bytes * (layer.get("half_elems", 0.0) + rank * layer.get("rank_elems", 0.0))
        )
        if layer.get("scores_stored"):
            full += n * half_bytes * layer.get("heads", 1) * layer.get("seq", 0)
        widest = max(widest, full)
        if checkpointing and layer.get("checkpointable", True):
            stored += n * 4 * layer.get("ckpt_elems", 0.0)
        else:
            stored += full
    per_token_fixed = description.input_bytes_per_token + description.index_bytes_per_token
    saved = (stored + widest) * description.activation_factor
    return int(saved + tokens * per_token_fixed + micro_batch * description.fixed_bytes_per_sample)


def estimate_description(
    description: MemoryDescription,
    micro_batch: int,
    checkpointing: bool,
    precision: str,
    device: str = "cuda",
    correction: float = 1.0,
    notes: list[str] | None = None,
    rank: int | None = None,
) -> Estimate:
    """The estimate for a described model at explicit settings (the planner varies these).

    `rank` None keeps the described rank; another rank rescales the LoRA parameters and branches.
    """
    rank = description.rank if rank is None else rank
    lora_params = description.lora_params + (rank - description.rank) * description.lora_params_per_rank
    trainable = lora_params + description.other_trainable_params
    weights = description.frozen_bytes if description.frozen_bytes is not None else 4 * description.frozen_params
    weights += description.extra_bytes
    parts = {
        "weights": int(weights),
        "lora": 4 * trainable,
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,
        "activations": activation_bytes(description, micro_batch, checkpointing, precision, rank),
    }
    model_part = int(sum(parts.values()) * correction)
    if device == "cuda":
        parts["overhead"] = int(CUDA_CONTEXT_BYTES + FRAGMENTATION * model_part)
    else:
        parts["overhead"] = 0
    expected = model_part + parts["overhead"]
    if correction != 1.0:
        # Keep the breakdown summing to the expected peak: the correction is spread pro rata.
        for key in ("weights", "lora", "gradients", "optimizer", "activations"):
            parts[key] = int(parts[key] * correction)
    return Estimate(
        estimate_bytes=int(expected * (1 + SAFETY_MARGIN)),
        expected_bytes=int(expected),
        breakdown={k: int(parts[k]) for k in BREAKDOWN_KEYS},
        tokens=description.tokens_per_sample * micro_batch,
        device=device,
        correction=correction,
        notes=list(notes or []) + list(description.notes),
    )


def estimate_recipe(
    recipe: Recipe,
    *,
    device: str | None = None,
    description: MemoryDescription | None = None,
) -> Estimate:
    """The peak-memory estimate of one training process of `recipe`, as it stands.

    Args:
        recipe: the resolved profile.
        device: "cuda" or "cpu"; None reads `train.device` (and `hardware.cpu_mode` for "auto").
        description: a precomputed description (the planner reuses one across candidates).

    Returns:
        The Estimate; `estimate_bytes` is the number to compare with the device.
    """
    profile = recipe.profile
    device = device or profile.device_type
    description = description or recipe.family.describe_memory(recipe)
    train = profile.train
    notes = []
    correction = correction_for(profile, device)
    if correction != 1.0:
        notes.append(f"corrected by the measured factor {correction:.2f} from `hardware.measured`")
    return estimate_description(
        description,
        micro_batch=train.batch_size,
        checkpointing=train.gradient_checkpointing,
        precision=train.mixed_precision,
        device=device,
        correction=correction,
        notes=notes,
    )
