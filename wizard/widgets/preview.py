"""Provides the preview picture widget: a PNG drawn in the terminal through the maintained `textual-image`.

Half-block characters (one cell = two pixels, upper and lower, coloured) by default: they work in every
terminal with colours, over SSH and in tmux. Where the terminal answers that it speaks sixel or the kitty
graphics protocol, the picture is drawn in full resolution instead. textual-image asks the terminal once,
when it is imported (so this module is imported before the app starts, through the screens package);
its plain-text fallback for a non-terminal is replaced by half-blocks, which Textual draws anywhere.
`LORA3D_IMAGES=halfblocks|sixel|kitty|auto` overrides the choice (tests pin `halfblocks`).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image as PILImage
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static
from textual_image._terminal import get_cell_size  # the cell size in pixels (not re-exported by the package)
from textual_image.renderable import Image as DetectedRenderable
from textual_image.renderable import SixelImage as SixelRenderable
from textual_image.renderable import TGPImage as TGPRenderable
from textual_image.widget import HalfcellImage, SixelImage, TGPImage

from wizard.run.state import Preview, PreviewItem

IMAGES_ENV = "LORA3D_IMAGES"
"""Environment variable that picks how pictures are drawn: `auto` (default), `halfblocks`, `sixel`, `kitty`."""

RENDERERS: dict[str, type[Widget]] = {"halfblocks": HalfcellImage, "sixel": SixelImage, "kitty": TGPImage}


def detected_renderer() -> str:
    """What textual-image found the terminal speaks: `sixel`, `kitty`, else `halfblocks`."""
    if DetectedRenderable is SixelRenderable:
        return "sixel"
    if DetectedRenderable is TGPRenderable:
        return "kitty"
    return "halfblocks"  # a terminal without graphics, or no terminal at all (tests, pipes)


def choose_renderer(setting: str | None = None) -> tuple[str, str]:
    """The drawing method (`halfblocks`, `sixel` or `kitty`) and a note when the setting was not understood.

    `setting` defaults to `$LORA3D_IMAGES`, then `auto`: sixel or kitty graphics where the terminal answered
    that it speaks them, else half-blocks.
    """
    raw = setting if setting is not None else os.environ.get(IMAGES_ENV, "auto")
    value = raw.strip().lower()
    if value in RENDERERS:
        return value, ""
    note = "" if value in ("", "auto") else (
        f"{IMAGES_ENV}={raw!r} is not one of auto, halfblocks, sixel, kitty: using auto")
    return detected_renderer(), note


def fit_cells(pixels: tuple[int, int], box: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int]:
    """The largest (columns, rows) inside `box` that keeps the picture's aspect ratio.

    Args:
        pixels: the picture's (width, height) in pixels.
        box: the room, (columns, rows) in cells.
        cell: one cell's (width, height) in screen pixels; half-blocks draw (1, 2).
    """
    width, height = pixels
    columns, rows = box
    if width <= 0 or height <= 0 or columns <= 0 or rows <= 0:
        return 0, 0
    scale = min(columns * cell[0] / width, rows * cell[1] / height)
    return max(1, min(columns, round(width * scale / cell[0]))), max(1, min(rows, round(height * scale / cell[1])))


def load_picture(path: Path) -> PILImage.Image:
    """The PNG as an RGB picture in memory (the file is closed at once: the run may rewrite the folder)."""
    with PILImage.open(path) as image:
        image.load()
        return image.convert("RGB")


class PreviewPicture(Vertical):
    """A caption line above one picture, the picture fitted to the room left (aspect ratio kept).

    `show(path, caption)` draws a PNG; a missing or unreadable file shows its path and why instead. A `path`
    given at construction is shown once mounted.
    """

    DEFAULT_CSS = """
    PreviewPicture { height: 1fr; padding: 0 1; }
    PreviewPicture > .preview-caption { height: auto; }
    PreviewPicture > .preview-image { width: auto; height: auto; }
    """

    def __init__(self, path: Path | None = None, caption: Text | str = "", renderer: str | None = None, *,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._initial = (path, caption)
        self.renderer, self.note = choose_renderer(renderer)
        """How the picture is drawn, and why the setting was not followed (empty when it was)."""
        self.path: Path | None = None
        """The PNG shown now (None: nothing, or it could not be read)."""
        self.picture: PILImage.Image | None = None
        self.problem: str | None = None
        """Why the last PNG asked for is not shown."""
        self._caption_rows = 0

    def compose(self) -> ComposeResult:
        yield Static("", classes="preview-caption")
        yield RENDERERS[self.renderer](classes="preview-image")

    def on_mount(self) -> None:
        if self._initial[0] is not None:
            self.show(*self._initial)

    @property
    def image_widget(self) -> Widget:
        return self.query_one(".preview-image")

    def show(self, path: Path | None, caption: Text | str = "") -> None:
        """Draws the PNG at `path` under `caption` (None clears the picture)."""
        self.path, self.problem, self.picture = None, None, None
        if path is not None:
            try:
                self.picture = load_picture(path)
                self.path = path
            except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
                self.problem = f"{path}: cannot be read ({type(exc).__name__}: {exc})"
        text = Text(caption) if isinstance(caption, str) else caption.copy()
        if self.problem:
            text.append(("\n" if text.plain else "") + self.problem, style="yellow")
        text.no_wrap, text.overflow = True, "ellipsis"  # one row per line: the picture gets the rest
        self._caption_rows = len(text.plain.splitlines()) if text.plain else 0
        label = self.query_one(".preview-caption", Static)
        label.update(text)
        label.styles.height = self._caption_rows
        self.image_widget.image = self.picture  # type: ignore[attr-defined]
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Sizes the picture in cells from the room left under the caption (the widget's own `auto` sizing
        would ask the terminal's cell size in pixels, which differs between terminals even for half-blocks)."""
        image = self.image_widget
        if self.picture is None:
            image.styles.width, image.styles.height = 0, 0
            return
        room = (self.content_size.width, self.content_size.height - self._caption_rows)
        cell = (1, 2) if self.renderer == "halfblocks" else tuple(get_cell_size())
        columns, rows = fit_cells(self.picture.size, room, cell)
        image.styles.width, image.styles.height = columns, rows


class PreviewBrowser(PreviewPicture):
    """The dashboard's Previews tab: one picture of the run's preview rounds at a time, newest first shown.

    Every (round, item) pair is one picture, in the order written. `move(-1)` / `move(+1)` step to earlier or
    later ones; while the newest is shown, a new round's pictures replace it as they arrive.
    """

    def __init__(self, run_dir: Path, renderer: str | None = None, *, id: str | None = None) -> None:
        super().__init__(renderer=renderer, id=id)
        self.run_dir = Path(run_dir)
        self.frames: list[tuple[Preview, PreviewItem]] = []
        self.index: int | None = None
        """The picture shown (an index into `frames`); None follows the newest."""
        self.finished = False

    def on_mount(self) -> None:
        self._draw()

    def update_previews(self, previews: list[Preview], finished: bool = False) -> None:
        """Takes the run's preview rounds (`RunState.previews`); redraws only when something changed."""
        frames = [(preview, item) for preview in previews for item in preview.items]
        if frames == self.frames and finished == self.finished:
            return
        self.frames, self.finished = frames, finished
        if self.index is not None:
            self.index = min(self.index, len(frames) - 1) if frames else None
        self._draw()

    @property
    def current(self) -> int | None:
        if not self.frames:
            return None
        return len(self.frames) - 1 if self.index is None else self.index

    def move(self, delta: int) -> None:
        """Steps `delta` pictures back (negative) or forward; stepping past the newest follows new ones again."""
        current = self.current
        if current is None:
            return
        target = max(0, current + delta)
        self.index = None if target >= len(self.frames) - 1 else target
        self._draw()

    def _draw(self) -> None:
        current = self.current
        if current is None:
            why = ("this run wrote no previews (the profile's `previews.enabled` is false, or its family draws none)"
                   if self.finished else
                   "no previews yet: the run draws them at step 0 (the base model) and after every evaluation")
            self.show(None, Text(why, style="dim"))
            return
        preview, item = self.frames[current]
        caption = Text()
        caption.append(f"step {preview.step}", style="bold")
        caption.append(f" · {item.name} ({preview.items.index(item) + 1} of {len(preview.items)})")
        caption.append(f" · picture {current + 1} of {len(self.frames)}")
        caption.append("  [ earlier  ] later" + ("" if self.index is not None else "  (newest)"), style="dim")
        details = item.png + (f" + {Path(item.glb).name}" if item.glb else "")
        if preview.seconds is not None:
            details += f" · drawn in {preview.seconds:.1f}s"
        if preview.skipped:
            details += f" · skipped for time: {', '.join(preview.skipped)}"
        caption.append("\n" + details, style="dim")
        self.show(self.run_dir / item.png, caption)
