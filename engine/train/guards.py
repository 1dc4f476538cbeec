"""Provides the training guards: gradient flow after the first step, and the loss watchdog."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from engine.errors import Lora3dError


class GradientFlowError(Lora3dError):
    """Some adapted modules got no gradient: wrong targets, or checkpointing with frozen inputs."""


class DivergenceError(Lora3dError):
    """The loss became NaN or infinite."""


def _owner(name: str) -> str:
    """The adapted module a parameter belongs to: `a.b.lora_A.default.weight` -> `a.b`,
    `lora3d_prompt.enc3.qkv.down.weight` -> `lora3d_prompt.enc3.qkv`."""
    if ".lora_" in name:
        return name.split(".lora_")[0]
    if "lora3d_prompt" in name:
        # A prompt MLP (`...<role>.down|up.weight`) is one adapter like LoRA's A/B pair: `up` starts at zero,
        # so `down` gets no gradient on the first step.
        return name.rsplit(".", 2)[0]
    return name.rsplit(".", 1)[0]


def modules_without_gradient(model: nn.Module) -> list[str]:
    """Trainable modules none of whose parameters received a non-zero gradient.

    LoRA's A matrix legitimately gets a zero gradient on the first step (B starts at zero), so the check is
    per adapted module: A and B together.
    """
    seen: dict[str, bool] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = _owner(name)
        nonzero = param.grad is not None and bool(param.grad.detach().abs().sum() > 0)
        seen[owner] = seen.get(owner, False) or nonzero
    return sorted(name for name, ok in seen.items() if not ok)


def check_gradient_flow(model: nn.Module) -> None:
    dead = modules_without_gradient(model)
    if dead:
        shown = ", ".join(dead[:8]) + (f" and {len(dead) - 8} more" if len(dead) > 8 else "")
        raise GradientFlowError(
            f"after the first step {len(dead)} adapted module(s) received no gradient: {shown}. "
            "Check `lora.target_modules` / `lora.target_stages` (are these modules used in the forward pass?) "
            "and, with `train.gradient_checkpointing: true`, that the backbone uses non-reentrant checkpointing."
        )


@dataclass
class LossWatchdog:
    """NaN/inf stops the run; a loss above `spike_factor` x its running average warns."""

    spike_factor: float = 10.0
    ema: float | None = None
    decay: float = 0.9
    warmup: int = 5
    seen: int = 0

    def check(self, loss: float, step: int) -> str | None:
        """Raises DivergenceError on NaN/inf; returns a warning text on a spike, else None."""
        if not math.isfinite(loss):
            raise DivergenceError(
                f"loss became {loss} at step {step}; no adapter was written from this state. "
                "Lower `train.lr`, keep `train.max_grad_norm` set, or use `train.mixed_precision: bf16` instead of "
                "fp16; then rerun with --resume to continue from the last good checkpoint."
            )
        warning = None
        if self.ema is not None and self.seen >= self.warmup and loss > self.spike_factor * self.ema:
            warning = (
                f"loss spike at step {step}: {loss:.4g} is over {self.spike_factor:g}x its running average "
                f"{self.ema:.4g}. If it persists, lower `train.lr`."
            )
        self.ema = loss if self.ema is None else self.decay * self.ema + (1 - self.decay) * loss
        self.seen += 1
        return warning
