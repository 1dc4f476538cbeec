"""Provides parameter counts for the start event and summaries: total, trainable, adapter, ratio."""

from __future__ import annotations

from typing import Any

from torch import nn


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Counts for the whole model; the per-module LoRA table comes from `engine.lora` when available."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    summary: dict[str, Any] = {
        "total": total,
        "trainable": trainable,
        "lora": lora,
        "ratio": trainable / total if total else 0.0,
        "modules": [],
    }
    try:
        from engine.lora import lora_summary
    except ImportError:
        return summary
    try:
        summary["modules"] = lora_summary(model).get("rows", [])
    except Exception:  # a model without adapters, or an older summary format: counts alone still help
        summary["modules"] = []
    return summary
