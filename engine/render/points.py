"""Provides a numpy point-splat renderer: coloured points seen from above and from an oblique camera, no OpenGL.

Scenes are z-up (indoor scans and 3DGS captures aligned to the floor). Each point becomes a square
splat of `point_px` pixels; a z-buffer keeps the nearest point per pixel (the one highest up in the
top-down view), so walls and objects hide what is behind them. Points are not blended: a splat viewer
shows the Gaussians themselves, these images show which label or score each one got.

`compose_figure` puts views side by side under a title with a legend (class swatches or a colour bar)
and `write_png` saves it atomically.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.atomic import atomic_file

BACKGROUND = (255, 255, 255)
UNLABELLED_RGB = (170, 170, 170)
"""Colour of points without a label (below a confidence threshold, or ignored)."""

# Distinct colours for the first classes (then golden-ratio hues): readable on white, far apart in hue.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (57, 59, 121), (99, 121, 57), (140, 109, 49),
    (132, 60, 57), (123, 65, 115), (82, 84, 163), (181, 207, 107), (231, 186, 82), (214, 97, 107),
    (206, 109, 189), (107, 110, 207),
)
# Anchors of a dark-to-bright heat scale (black, purple, red, orange, pale yellow), interpolated linearly.
_HEAT = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 distinct colours, the same for the same class index everywhere."""
    colors = list(_PALETTE[:num_classes])
    golden = 0.618033988749895
    for i in range(len(colors), num_classes):
        r, g, b = colorsys.hsv_to_rgb((0.13 + i * golden) % 1.0, 0.65, 0.85)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(colors, dtype=np.uint8).reshape(num_classes, 3)


def label_colors(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, 3) uint8: each label's class colour; labels outside [0, num_classes) get `UNLABELLED_RGB`."""
    labels = np.asarray(labels)
    palette = np.vstack([class_colors(num_classes), np.asarray(UNLABELLED_RGB, dtype=np.uint8)])
    index = np.where((labels >= 0) & (labels < num_classes), labels, num_classes)
    return palette[index]


def heat_colors(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(N, 3) uint8 on the heat scale: `low` and below dark, `high` and above bright."""
    t = (np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12)
    t = np.clip(t, 0.0, 1.0) * (len(_HEAT) - 1)
    stops = np.arange(len(_HEAT))
    return np.stack([np.interp(t, stops, _HEAT[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def _camera(view: str, center: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The oblique camera's eye and world-to-camera rotation (rows right, up, forward); None for `top`."""
    if view == "top":
        return None
    elevation, azimuth = math.radians(35.0), math.radians(-60.0)
    forward = -np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                         math.sin(elevation)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    eye = center - forward * (radius / math.sin(math.radians(20.0)) * 1.05)
    return eye, np.stack([right, up, forward])


def render_points(
    xyz: np.ndarray,
    rgb: np.ndarray,
    view: str = "top",
    image_size: int = 512,
    point_px: int = 2,
) -> np.ndarray:
    """Renders coloured points with a z-buffer.

    Args:
        xyz: (N, 3) positions, z up.
        rgb: (N, 3) uint8 colours.
        view: `top` (orthographic, looking down, +y up in the image) or `oblique` (perspective, 35 degrees
            above the floor, a 40-degree field of view fitted to the scene's bounding sphere).
        image_size: width and height in pixels.
        point_px: the side of each point's square splat, pixels.

    Returns:
        (image_size, image_size, 3) uint8 over a white background.
    """
    if view not in ("top", "oblique"):
        raise ValueError(f"view must be 'top' or 'oblique', got {view!r}")
    size = int(image_size)
    image = np.full((size * size, 3), BACKGROUND, dtype=np.uint8)
    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return image.reshape(size, size, 3)
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    center = (lo + hi) / 2
    camera = _camera(view, center, max(float(np.linalg.norm(hi - lo)) / 2, 1e-6))
    if camera is None:
        # 1. Orthographic from above: x to the right, y up; nearer = higher z.
        scale = 0.92 * size / max(float((hi - lo)[:2].max()), 1e-6)
        px = size / 2 + (xyz[:, 0] - center[0]) * scale
        py = size / 2 - (xyz[:, 1] - center[1]) * scale
        near = xyz[:, 2]
        keep = np.ones(len(xyz), dtype=bool)
    else:
        # 1. Perspective: project through the camera; nearer = smaller depth.
        eye, rotation = camera
        cam = (xyz - eye) @ rotation.T
        keep = cam[:, 2] > 1e-6
        focal = (size / 2) / math.tan(math.radians(20.0))
        depth = np.where(keep, cam[:, 2], 1.0)
        px = size / 2 + focal * cam[:, 0] / depth
        py = size / 2 - focal * cam[:, 1] / depth
        near = -depth
    # 2. Each point covers a point_px x point_px square of pixels.
    offsets = np.arange(point_px) - (point_px - 1) / 2
    cols = np.floor(px[:, None] + offsets[None, :]).astype(np.int64)  # (N, k)
    rows = np.floor(py[:, None] + offsets[None, :]).astype(np.int64)
    pix_rows = np.repeat(rows, point_px, axis=1)  # (N, k*k)
    pix_cols = np.tile(cols, (1, point_px))
    inside = keep[:, None] & (pix_rows >= 0) & (pix_rows < size) & (pix_cols >= 0) & (pix_cols < size)
    point, _ = np.nonzero(inside)
    pix = pix_rows[inside] * size + pix_cols[inside]
    # 3. Z-buffer: per pixel, the nearest point wins.
    order = np.argsort(-near[point], kind="stable")
    pix, point = pix[order], point[order]
    _, first = np.unique(pix, return_index=True)
    image[pix[first]] = np.asarray(rgb, dtype=np.uint8)[point[first]]
    return image.reshape(size, size, 3)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    """`text` in lines of at most `width` pixels, broken between words (a word wider than a line is cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(_fit(draw, word, font, width))
    return lines or [""]


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: float) -> str:
    """`text`, shortened with an ellipsis to at most `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def compose_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    title: str,
    legend: Sequence[tuple[str, Sequence[int]]] = (),
    colorbar: tuple[float, float, str] | None = None,
) -> Image.Image:
    """Views side by side under a title, with class swatches or a heat colour bar on the right.

    Args:
        panels: (caption, (H, W, 3) uint8 image) per view.
        title: the line above the views.
        legend: (label, rgb) per class swatch.
        colorbar: (low, high, caption) of a heat scale instead of swatches.
    """
    font, small = _font(18), _font(14)
    h = max(p.shape[0] for _, p in panels)
    legend_w = 260 if (legend or colorbar) else 0
    width = sum(p.shape[1] for _, p in panels) + 10 * (len(panels) + 1) + legend_w
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(draw, title, font, width - 20)
    top = 60 + 22 * (len(lines) - 1)  # the panels' top edge, below the title's lines
    figure = Image.new("RGB", (width, max(top + h + 20, top + 22 * len(legend))), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    for i, line in enumerate(lines):
        draw.text((10, 8 + 22 * i), line, fill=(0, 0, 0), font=font)
    x = 10
    for caption, panel in panels:
        figure.paste(Image.fromarray(panel), (x, top))
        draw.rectangle([x - 1, top - 1, x + panel.shape[1], top + panel.shape[0]], outline=(200, 200, 200))
        draw.text((x, top - 22), caption, fill=(60, 60, 60), font=small)
        x += panel.shape[1] + 10
    if legend:
        for i, (label, color) in enumerate(legend):
            y = top + 22 * i
            draw.rectangle([x, y, x + 16, y + 16], fill=tuple(int(c) for c in color), outline=(0, 0, 0))
            draw.text((x + 24, y), _fit(draw, label, small, legend_w - 34), fill=(0, 0, 0), font=small)
    elif colorbar is not None:
        low, high, caption = colorbar
        bar_h = h - 40
        ramp = heat_colors(np.linspace(high, low, bar_h), low, high)  # top = high
        figure.paste(Image.fromarray(np.repeat(ramp[:, None, :], 24, axis=1)), (x, top + 20))
        draw.rectangle([x - 1, top + 19, x + 24, top + 20 + bar_h], outline=(0, 0, 0))
        draw.text((x + 32, top + 14), f"{high:.3g}", fill=(0, 0, 0), font=small)
        draw.text((x + 32, top + 10 + bar_h), f"{low:.3g}", fill=(0, 0, 0), font=small)
        draw.text((x, top - 4), caption, fill=(0, 0, 0), font=small)
    return figure


def write_png(image: Image.Image, path: Path) -> Path:
    """Saves the image as PNG, atomically."""
    with atomic_file(Path(path)) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


__all__ = ["UNLABELLED_RGB", "class_colors", "compose_figure", "heat_colors", "label_colors", "render_points",
           "write_png"]
