"""Provides parameter counts for the start event and summaries: total, trainable, adapter, ratio."""

from __future__ import annotations

from typing import Any

from torch import nn

from engine.lora import lora_summary


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Counts for the whole model and the per-module LoRA table (empty for a model without adapters)."""
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
    summary["modules"] = lora_summary(model).get("rows", [])
    return summary
