"""Provides renderers shared by the families: coloured point splats with a z-buffer (`points`)."""

from engine.render.points import (
    UNLABELLED_RGB,
    class_colors,
    compose_figure,
    heat_colors,
    label_colors,
    render_points,
    write_png,
)

__all__ = ["UNLABELLED_RGB", "class_colors", "compose_figure", "heat_colors", "label_colors", "render_points",
           "write_png"]
