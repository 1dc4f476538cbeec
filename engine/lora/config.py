"""Provides the LoRA hyper-parameter check, the `peft.LoraConfig` built from resolved targets, and the names
that mark an adapter parameter (the one list every module reads)."""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig

from engine.errors import ProfileError

LORA_PARAM_PARTS = frozenset({"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"})
"""Name parts that mark a PEFT LoRA parameter (``...qkv.lora_A.default.weight``)."""

BIAS_MODES: tuple[str, ...] = ("none", "all", "lora_only")
"""Which biases train next to LoRA (PEFT's `bias` values)."""


def check_lora_hyperparameters(r: int, lora_alpha: float, lora_dropout: float) -> None:
    """Raise ProfileError for a rank, alpha or dropout no LoRA layer can use."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ProfileError(f"`lora.r`: must be a positive integer, got {r!r}. Use 4, 8, 16 or 32.")
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or lora_alpha <= 0:
        raise ProfileError(
            f"`lora.lora_alpha`: must be a positive number, got {lora_alpha!r}. Use the rank (scale 1.0)."
        )
    if not isinstance(lora_dropout, (int, float)) or not 0.0 <= lora_dropout < 1.0:
        raise ProfileError(f"`lora.lora_dropout`: must be in [0, 1), got {lora_dropout!r}. Use 0.0 or 0.1.")


def build_lora_config(
    target_modules: Sequence[str],
    r: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    bias: str = "none",
) -> LoraConfig:
    """Build the PEFT config for an explicit list of full module names.

    Full names (not suffixes) keep PEFT from adapting same-named layers outside the chosen stages or
    blocks; PEFT matches a list entry against a module name exactly or as a dotted suffix.
    """
    check_lora_hyperparameters(r, lora_alpha, lora_dropout)
    if bias not in BIAS_MODES:
        raise ProfileError(f"`lora.bias`: unknown bias mode, got {bias!r}. Use one of {list(BIAS_MODES)!r}.")
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=float(lora_dropout),
        target_modules=list(target_modules),
        bias=bias,
        init_lora_weights=True,
    )
