"""Provides the run state the dashboard shows: the engine's, folded from events.jsonl (no Textual here).

The state, its number formatting and the one-line event rendering live in `engine.train.run_state`, so
the headless display, `lora3d watch --plain` and the dashboard read events through one typed reader.
"""

from engine.train.run_state import (
    SMOOTHING,
    Preview,
    PreviewItem,
    RunState,
    event_line,
    format_bytes,
    format_duration,
)

__all__ = ["SMOOTHING", "Preview", "PreviewItem", "RunState", "event_line", "format_bytes", "format_duration"]
