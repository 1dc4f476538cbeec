"""Provides the hardware panel: GPUs, host RAM, accelerators and the tier recommendation."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from engine.hardware import HardwareInfo
from engine.memory.tiers import GIB, recommend_tier


def hardware_renderable(hardware: HardwareInfo) -> Group:
    """The probe result as rich renderables (also used by the plain path)."""
    parts: list = []
    if hardware.cpu_mode:
        parts.append(Text("no GPU: CPU mode (smoke tests and the demo)", style="bold yellow"))
        detail = hardware.note.removeprefix("no GPU: CPU mode (smoke tests and the demo)").lstrip("; ")
        if detail:
            parts.append(Text(detail, style="dim"))
    else:
        table = Table(title="GPUs (torch device order)", title_justify="left", expand=False, padding=(0, 1))
        for col, justify in (("#", "right"), ("name", "left"), ("total", "right"), ("free", "right"), ("driver", "left")):
            table.add_column(col, justify=justify)
        for g in hardware.gpus:
            table.add_row(str(g.index), g.name, f"{g.total_bytes / GIB:.1f} GB", f"{g.free_bytes / GIB:.1f} GB",
                          g.driver or "?")
        parts.append(table)
    accel = "  ".join(f"{name.replace('_', '-')}: {'yes' if ok else 'no'}" for name, ok in hardware.accelerators.items())
    parts.append(Text(f"host RAM {hardware.host_ram_bytes / GIB:.1f} GB, {hardware.cpu_count} CPU cores   {accel}"))
    rec = recommend_tier(hardware)
    parts.append(Text(""))
    parts.append(Text.assemble(("recommendation ", "bold"), (f"({rec.tier})", "cyan"),
                               f": rank {rec.rank}, batch {rec.batch_size}, gradient checkpointing "
                               f"{'on' if rec.gradient_checkpointing else 'off'}, precision {rec.precision}"))
    parts.append(Text(rec.reason, style="dim"))
    if rec.warning:
        parts.append(Text(f"warning: {rec.warning}", style="yellow"))
    return Group(*parts)


class GpuTable(Static):
    """Shows a `HardwareInfo` (set `hardware`)."""

    def show(self, hardware: HardwareInfo) -> None:
        self.update(hardware_renderable(hardware))
