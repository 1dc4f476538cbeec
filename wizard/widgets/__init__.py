"""Provides the wizard's widgets: hardware panel, curve plots, LoRA table, run numbers, profile preview, pictures."""

from wizard.widgets.gpu_table import GpuTable, hardware_renderable
from wizard.widgets.lora_table import LoraTable
from wizard.widgets.loss_plot import CurvePlot
from wizard.widgets.preview import PreviewBrowser, PreviewPicture
from wizard.widgets.profile_preview import ProfilePreview
from wizard.widgets.run_stats import RunStats, stats_renderable

__all__ = ["CurvePlot", "GpuTable", "LoraTable", "PreviewBrowser", "PreviewPicture", "ProfilePreview", "RunStats",
           "hardware_renderable", "stats_renderable"]
