"""Provides the curve plots of the dashboard: textual-plotext line plots, Sparklines when it is missing."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

try:
    from textual_plotext import PlotextPlot
except ImportError:  # optional: the dashboard still works with Sparklines
    PlotextPlot = None


class CurvePlot(Vertical):
    """One titled plot of up to two series over steps (`show(x, series)`).

    Args:
        title: the plot's title.
        ylabel: axis label (plotext only).
        use_plotext: False forces the Sparkline fallback.
    """

    def __init__(self, title: str, ylabel: str = "", use_plotext: bool = True, id: str | None = None) -> None:
        super().__init__(id=id, classes="curve")
        self.title = title
        self.ylabel = ylabel
        self.use_plotext = use_plotext and PlotextPlot is not None
        self._last: tuple = ()

    def compose(self) -> ComposeResult:
        if self.use_plotext:
            yield PlotextPlot()
        else:
            yield Static(self.title, classes="curve-title")
            yield Sparkline([], summary_function=max)
            yield Static("", classes="curve-caption")

    def on_mount(self) -> None:
        self.show([], {})

    def show(self, x: list[int], series: dict[str, list[float]]) -> None:
        """Redraws when the data changed. `series` maps a label to values aligned with `x`."""
        key = (len(x), tuple((k, len(v), v[-1] if v else None) for k, v in series.items()))
        if key == self._last:
            return
        self._last = key
        if self.use_plotext:
            plot = self.query_one(PlotextPlot)
            plt = plot.plt
            plt.clear_data()
            plt.clear_figure()
            plt.title(self.title)
            plt.xlabel("step")
            if self.ylabel:
                plt.ylabel(self.ylabel)
            for label, values in series.items():
                if values:
                    plt.plot(x[-len(values):], values, label=label, marker="braille")
            plot.refresh()
            return
        first = next(iter(series.values()), [])
        self.query_one(Sparkline).data = list(first) or [0.0]
        caption = "  ".join(f"{k} {v[-1]:.4g}" for k, v in series.items() if v) or "no data yet"
        self.query_one(".curve-caption", Static).update(caption)
