"""Provides the per-module LoRA table (module, shape, rank, params) from `lora_summary` rows."""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable


def _shape(row: dict[str, Any]) -> str:
    shape = row.get("shape")
    return "x".join(str(d) for d in shape) if isinstance(shape, (list, tuple)) else str(shape or "")


class LoraTable(DataTable):
    """One row per adapted module; `show(rows)` replaces the content."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("module", "shape", "rank", "params")

    def show(self, rows: list[dict[str, Any]]) -> None:
        self.clear()
        for row in rows:
            module = str(row.get("module", "?")) + (" (prompt)" if row.get("kind") == "prompt" else "")
            params = row.get("params")
            self.add_row(module, _shape(row), str(row.get("rank", "")),
                         f"{params:,}" if isinstance(params, int) else str(params or ""))
