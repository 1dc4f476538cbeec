"""Tests the point-splat renderer: where points land, which one the z-buffer keeps, colours and the figure."""

from __future__ import annotations

import numpy as np
import pytest

from engine.render import (
    UNLABELLED_RGB,
    class_colors,
    compose_figure,
    heat_colors,
    label_colors,
    render_points,
    write_png,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def test_top_view_puts_x_right_and_y_up_and_keeps_the_highest_point():
    # Two stacked points at the centre (blue above red) and one in the +x, +y corner.
    xyz = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    rgb = np.array([RED, BLUE, RED, RED], dtype=np.uint8)
    image = render_points(xyz, rgb, "top", image_size=101, point_px=1)
    assert tuple(image[50, 50]) == BLUE  # the higher point hides the lower one
    corner = np.argwhere((image == RED).all(axis=2))
    rows, cols = corner[:, 0], corner[:, 1]
    assert {(r < 50, c > 50) for r, c in zip(rows, cols)} == {(True, True), (False, False)}  # +y is up, +x right
    assert (image == 255).all(axis=2).sum() == 101 * 101 - 3


def test_oblique_view_keeps_the_point_nearer_the_camera():
    # The camera looks from above and from -y (azimuth -60 degrees): the upper of two stacked points is nearer.
    xyz = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [2.0, 2.0, 0.0], [-2.0, -2.0, 0.0]])
    rgb = np.array([RED, BLUE, RED, RED], dtype=np.uint8)
    image = render_points(xyz, rgb, "oblique", image_size=200, point_px=3)
    assert (image == BLUE).all(axis=2).sum() == 9 and (image == RED).all(axis=2).sum() >= 9


def test_colours_for_labels_and_heat():
    colors = class_colors(25)
    assert colors.shape == (25, 3) and len({tuple(c) for c in colors}) == 25
    np.testing.assert_array_equal(label_colors(np.array([0, 2, -1, 7]), 3)[[0, 1]], colors[[0, 2]])
    assert {tuple(c) for c in label_colors(np.array([-1, 7]), 3)} == {UNLABELLED_RGB}
    heat = heat_colors(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]), 0.0, 1.0).astype(int)
    assert (heat[0] == heat[1]).all() and (heat[3] == heat[4]).all() and heat[3].sum() > heat[2].sum() > heat[1].sum()


@pytest.mark.parametrize("legend", ["swatches", "colorbar"])
def test_the_figure_holds_both_views_and_the_legend(tmp_path, legend):
    panel = np.zeros((64, 64, 3), dtype=np.uint8)
    kwargs = ({"legend": [("floor", (1, 2, 3)), ("wall", (4, 5, 6))]} if legend == "swatches"
              else {"colorbar": (0.1, 0.9, "cosine")})
    figure = compose_figure([("top-down", panel), ("oblique", panel)], "title", **kwargs)
    assert figure.size[0] >= 2 * 64 + 200 and figure.size[1] >= 64 + 60
    pixels = np.asarray(figure)
    if legend == "swatches":
        assert (pixels == (1, 2, 3)).all(axis=2).any() and (pixels == (4, 5, 6)).all(axis=2).any()
    path = write_png(figure, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_long_title_wraps_inside_the_figure_and_long_labels_are_shortened():
    """The MIDI preview's title ran past the figure's right edge: text must stay inside, every word shown."""
    panel = np.full((64, 64, 3), 255, dtype=np.uint8)
    short = compose_figure([("a", panel), ("b", panel)], "short")
    title = "scene_0000: step 120, 4 sampling steps, seed 0 (1 of 3 instances have a surface)"
    long = compose_figure([("a", panel), ("b", panel)], title,
                          legend=[("a class name far too long for the legend's column", (1, 2, 3))])
    assert long.size[0] == short.size[0] + 260 and long.size[1] > short.size[1]  # extra title lines, same width
    pixels = np.asarray(long)
    ink = ~(pixels == pixels[0, 0]).all(axis=2)  # anything not background
    assert not ink[:, -8:].any()  # nothing drawn at the right edge: the title wrapped, the label was cut
    outline = np.argwhere((pixels[:, 9] == (200, 200, 200)).all(axis=1))[:, 0]  # the first panel's left border
    assert outline.min() > 60  # the panels moved down below the title's lines
