"""Provides the LoRA parameter summary: a JSON-ready dict and the PointLoRA guide's printed block + table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from engine.lora.inject import get_active_adapter, is_lora_parameter_name, iter_lora_layers, list_adapters
from engine.lora.merge import MERGED_ATTR
from engine.lora.prompt import PROMPT_ATTR, get_prompt_bank, prompt_parameters

_RULE = "=" * 60


def _nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def lora_summary(model: nn.Module) -> dict[str, Any]:
    """Count total, LoRA (incl. prompt MLPs) and trainable parameters, with one row per adapted module.

    Returns:
        ``{"total_params", "lora_params", "trainable_params", "lora_ratio_percent", "lora_bytes",
        "adapters", "active_adapter", "merged", "prompt_kept_params", "rows"}``; each row is
        ``{"module", "kind" ("lora"|"prompt"|"prompt (merged)"), "adapter", "shape" [out, in], "rank", "params",
        "bytes"}``.
        Everything is JSON-serialisable.
    """
    prompt_ids = {id(p) for p in prompt_parameters(model, include_merged=True)}
    total = lora = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if is_lora_parameter_name(name) or id(param) in prompt_ids:
            lora += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    rows: list[dict[str, Any]] = []
    for name, layer in iter_lora_layers(model):
        base = layer.get_base_layer()
        for adapter in layer.lora_A:
            params = [*layer.lora_A[adapter].parameters(), *layer.lora_B[adapter].parameters()]
            rows.append({
                "module": name,
                "kind": "lora",
                "adapter": adapter,
                "shape": [int(base.out_features), int(base.in_features)],
                "rank": int(layer.r[adapter]),
                "params": sum(p.numel() for p in params),
                "bytes": _nbytes(params),
            })
    bank = get_prompt_bank(model)
    prompt_kept = 0
    if bank is not None:
        for adapter, stages in bank.adapters.items():
            for stage, mlps in stages.items():
                for role, mlp in mlps.items():
                    params = list(mlp.parameters())
                    if adapter in bank.always:
                        prompt_kept += sum(p.numel() for p in params)
                    rows.append({
                        "module": f"{PROMPT_ATTR}.{stage}.{role}",
                        "kind": "prompt (merged)" if adapter in bank.always else "prompt",
                        "adapter": adapter,
                        "shape": [int(mlp.up.out_features), int(mlp.down.in_features)],
                        "rank": int(mlp.down.out_features),
                        "params": sum(p.numel() for p in params),
                        "bytes": _nbytes(params),
                    })
    merged = getattr(model, MERGED_ATTR, None)
    return {
        "total_params": total,
        "lora_params": lora,
        "trainable_params": trainable,
        "lora_ratio_percent": 100.0 * lora / total if total else 0.0,
        "lora_bytes": sum(r["bytes"] for r in rows),
        "adapters": list_adapters(model),
        "active_adapter": get_active_adapter(model) or (merged or {}).get("adapter_name"),
        "merged": merged is not None,
        "prompt_kept_params": prompt_kept,
        "rows": rows,
    }


def format_summary_block(summary: dict[str, Any]) -> str:
    """Return the PointLoRA guide's summary block (7 lines) for a `lora_summary` result."""
    return "\n".join([
        _RULE,
        "LoRA Parameter Summary",
        _RULE,
        f"Total parameters: {summary['total_params']:,}",
        f"LoRA parameters: {summary['lora_params']:,}",
        f"Trainable parameters: {summary['trainable_params']:,}",
        f"LoRA ratio: {summary['lora_ratio_percent']:.2f}%",
        _RULE,
    ])


def build_summary_table(summary: dict[str, Any], max_rows: int = 40) -> Table:
    """Return a rich table of the summary rows (module, shape, rank, params, bytes)."""
    table = Table(title="LoRA modules", show_lines=False)
    for column, justify in (("module", "left"), ("adapter", "left"), ("shape", "right"),
                            ("rank", "right"), ("params", "right"), ("bytes", "right")):
        table.add_column(column, justify=justify)
    rows = summary["rows"]
    for row in rows[:max_rows]:
        module = row["module"] + (f" ({row['kind']})" if row["kind"] != "lora" else "")
        table.add_row(module, row["adapter"], "x".join(str(d) for d in row["shape"]), str(row["rank"]),
                      f"{row['params']:,}", f"{row['bytes']:,}")
    if len(rows) > max_rows:
        rest = rows[max_rows:]
        table.add_row(f"... {len(rest)} more", "", "", "", f"{sum(r['params'] for r in rest):,}",
                      f"{sum(r['bytes'] for r in rest):,}")
    return table


def print_lora_summary(model: nn.Module, console: Console | None = None, max_rows: int = 40) -> dict[str, Any]:
    """Print the guide's summary block, then the per-module table; return the `lora_summary` dict."""
    summary = lora_summary(model)
    print(format_summary_block(summary))
    if summary["merged"] and summary["prompt_kept_params"]:
        print(f"Merged adapter {getattr(model, MERGED_ATTR)['adapter_name']!r}: LoRA folded into the base "
              f"weights; prompt MLPs kept ({summary['prompt_kept_params']:,} parameters).")
    if summary["rows"]:
        (console or Console()).print(build_summary_table(summary, max_rows))
    return summary
