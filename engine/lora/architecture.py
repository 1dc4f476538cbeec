"""Provides the base model's identity: an architecture fingerprint (names, shapes) and a cheap weights digest.

Both skip LoRA and prompt parameters and read PEFT's ``.base_layer`` as the original name, so an
injected model and its plain base give the same values.

The weights digest is SHA-256 (16 hex digits) over the base parameters' names (in name order) and, for
each, up to `DIGEST_SAMPLES` values at evenly spaced flat positions, rounded to float16 (so a float16 copy
of a float32 base gives the same digest). It reads at most 64 values per tensor, not the whole model, so it
takes milliseconds even for a billion-parameter DiT (docs/benchmarks.md). The sketch is `SKETCH_SIZE`
random-sign sums of the same samples: when the two bases have different dtypes it tells a cast (bfloat16
moved the sums of tiny PTv3, SceneSplat's PTv3 and a DiT by 0.008-0.08%) from other weights (another
random init: 5-60%). Limits: a change confined to unsampled positions goes unnoticed, and across
precisions so does a change smaller than about `SKETCH_RTOL` (0.3%) of the weights' scale.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from engine.lora.config import LORA_PARAM_PARTS
from engine.lora.prompt import PROMPT_ATTR

DIGEST_SAMPLES = 64
"""Values per tensor the weights digest reads."""
SKETCH_SIZE = 16
"""Random-sign sums in the weights sketch."""
SKETCH_RTOL = 3e-3
"""Relative distance between two sketches below which bases of different precision count as the same."""
_FP16_MAX = 65504.0


def _base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters(remove_duplicate=False):
        parts = name.split(".")
        if parts[0] == PROMPT_ATTR or LORA_PARAM_PARTS.intersection(parts):
            continue
        yield ".".join(p for p in parts if p != "base_layer"), param


def base_parameter_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Return ``{original parameter name: shape}`` of the base model, with or without LoRA injected."""
    return {name: list(param.shape) for name, param in _base_parameters(model)}


def base_fingerprint(model: nn.Module) -> str:
    """Return a short hash of the base model's parameter names and shapes (16 hex digits)."""
    lines = "\n".join(f"{name}:{tuple(shape)}" for name, shape in sorted(base_parameter_shapes(model).items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def trained_base_parameters(model: nn.Module) -> list[str]:
    """Original names of base parameters that train next to the adapter (a head, biases): the digest skips them."""
    return sorted(name for name, param in _base_parameters(model) if param.requires_grad)


def _weight_samples(model: nn.Module, skip: Iterable[str]) -> list[tuple[str, torch.Tensor]] | None:
    """(name, float32 samples) per base parameter in name order; None for a model on the meta device."""
    skipped = set(skip)
    out = []
    for name, param in sorted(_base_parameters(model), key=lambda item: item[0]):
        if name in skipped:
            continue
        if param.is_meta:
            return None
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // DIGEST_SAMPLES)
        out.append((name, flat[::step][:DIGEST_SAMPLES].to("cpu", torch.float32)))
    return out


def base_weights_signature(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, object] | None:
    """Return the base's weights digest, sketch and dtype (see the module docstring); None on the meta device.

    Args:
        model: a base model, plain or injected.
        skip: original parameter names left out (parameters trained with the adapter).
    """
    samples = _weight_samples(model, skip)
    if samples is None:
        return None
    values = torch.cat([s for _, s in samples]) if samples else torch.zeros(0)
    values = torch.nan_to_num(values, nan=0.0, posinf=_FP16_MAX, neginf=-_FP16_MAX).clamp(-_FP16_MAX, _FP16_MAX)
    digest = hashlib.sha256("\n".join(f"{name}:{s.numel()}" for name, s in samples).encode())
    digest.update(values.to(torch.float16).numpy().tobytes())
    signs = torch.randint(0, 2, (SKETCH_SIZE, values.numel()), generator=torch.Generator().manual_seed(0)) * 2 - 1
    dtypes = Counter(str(p.dtype).removeprefix("torch.") for _, p in _base_parameters(model))
    return {
        "digest": digest.hexdigest()[:16],
        "sketch": [round(float(v), 6) for v in signs.double() @ values.double()],
        "dtype": dtypes.most_common(1)[0][0] if dtypes else "none",
    }


def base_weights_digest(model: nn.Module, skip: Iterable[str] = ()) -> str | None:
    """Return the sampled weights digest alone (16 hex digits), or None for a model on the meta device."""
    signature = base_weights_signature(model, skip)
    return None if signature is None else str(signature["digest"])


def same_weights(saved: dict[str, object], current: dict[str, object]) -> bool:
    """True when two signatures describe the same weights: equal digests, or, across precisions, close sketches."""
    if saved.get("digest") == current.get("digest"):
        return True
    if saved.get("dtype") == current.get("dtype") or not saved.get("sketch"):
        return False
    a = torch.tensor(saved["sketch"], dtype=torch.float64)
    b = torch.tensor(current["sketch"], dtype=torch.float64)
    return a.shape == b.shape and float((a - b).norm()) <= SKETCH_RTOL * max(float(a.norm()), 1e-12)


def diff_parameter_shapes(saved: dict[str, list[int]], current: dict[str, list[int]], limit: int = 4) -> list[str]:
    """Describe how two name->shape maps differ: shape changes first, then missing and extra names.

    Each phrase names at most `limit` parameters and counts the rest.
    """

    def names(keys: list[str]) -> str:
        shown = ", ".join(f"`{k}`" for k in keys[:limit])
        return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

    changed = [
        f"`{n}` shape {tuple(current[n])} != saved {tuple(saved[n])}"
        for n in sorted(saved.keys() & current.keys())
        if list(saved[n]) != list(current[n])
    ]
    out = changed[:limit] + ([f"{len(changed) - limit} more shape changes"] if len(changed) > limit else [])
    missing = sorted(saved.keys() - current.keys())
    extra = sorted(current.keys() - saved.keys())
    if missing:
        out.append(f"{names(missing)} missing in the model")
    if extra:
        out.append(f"{names(extra)} not in the adapter's base")
    return out
