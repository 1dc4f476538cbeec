"""Provides the syntax-highlighted YAML view of a profile."""

from __future__ import annotations

from rich.syntax import Syntax
from textual.widgets import Static


class ProfilePreview(Static):
    """Shows YAML text with highlighting (`show(text)`)."""

    def show(self, text: str) -> None:
        self.update(Syntax(text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True))
