"""Provides preview rounds: pictures of what the model does on a few fixed items, at step 0 and after evaluations.

A round draws the family's fixed items (`Family.preview_items`: the first `previews.items` of the validation
split) with the fixed seed `previews.seed`, in eval mode, without gradients, on a forked RNG (a run with
previews trains exactly as one without), and publishes `<run>/previews/step-<N>/` whole (a temporary folder
renamed into place), so a reader never sees half a round. Each round:

1. skips the items that would not fit in `previews.max_seconds` (an item's expected time is its time in the
   last round, or the mean of this round's items so far) and says so in a `warning` event;
2. writes the `preview` event (file paths relative to the run directory, the seconds spent, the skipped items);
3. adds the PNGs to TensorBoard as step-indexed images, and a family's mesh with `add_mesh`.

A failing item is a warning, not the end of the run: previews show training, they do not gate it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from engine.atomic import atomic_folder, clean_stale_temporaries
from engine.families.base import PreviewFiles, PreviewItem, Recipe

PREVIEWS_DIR = "previews"


class _NothingWritten(Exception):
    """Raised inside the round's atomic folder to leave no folder behind when no item was drawn."""

Emit = Callable[..., None]


def step_folder(run_dir: Path, step: int) -> Path:
    """Where the round of `step` lives: `<run>/previews/step-<step>`."""
    return Path(run_dir) / PREVIEWS_DIR / f"step-{step}"


def _safe_name(name: str) -> str:
    # Item names become file names and TensorBoard tags: keep them to one portable path component.
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "item"


@dataclass
class PreviewRound:
    """What one round did.

    Attributes:
        items: per drawn item `{"name", "png", "glb"}`, paths relative to the run directory.
        skipped: the items the budget left out.
        failed: `(item, message)` per item whose preview raised.
    """

    step: int
    seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class Previewer:
    """The preview rounds of one run (main process only).

    Args:
        recipe: the run's recipe (`previews` section, the family).
        run_dir: the run directory.
        train_ds, val_ds: the run's datasets; the family picks its fixed items from them.
        emit: writes an event (`emit(type, **fields)`).
        tensorboard: the TensorBoard `SummaryWriter`, or None.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, train_ds: Any, val_ds: Any, emit: Emit,
                 tensorboard: Any = None) -> None:
        self.recipe = recipe
        self.settings = recipe.profile.previews
        self.run_dir = Path(run_dir)
        self.emit = emit
        self.tensorboard = tensorboard
        self.items: list[PreviewItem] = []
        self.durations: dict[str, float] = {}
        self.notes: list[str] = []
        if not self.settings.enabled:
            self.notes.append("previews are off (`previews.enabled: false`)")
            return
        items = recipe.family.preview_items(recipe, train_ds, val_ds)
        self.items = [PreviewItem(_safe_name(i.name), i.dataset, i.index, i.split) for i in items]
        if not self.items:
            self.notes.append(f"the {recipe.family.name} family draws no previews; `previews` settings are unused")
            return
        names = ", ".join(i.name for i in self.items)
        split = self.items[0].split
        where = "validation" if split == "val" else f"{split} (there is no validation split)"
        self.notes.append(
            f"previews: {len(self.items)} fixed {where} item(s) ({names}), seed {self.settings.seed}, at step 0 and "
            f"after every evaluation, at most {self.settings.max_seconds:g} s per round, into "
            f"{self.run_dir / PREVIEWS_DIR}/step-N/"
        )
        clean_stale_temporaries(self.run_dir / PREVIEWS_DIR)

    @property
    def active(self) -> bool:
        return bool(self.items)

    def exists(self, step: int) -> bool:
        return step_folder(self.run_dir, step).is_dir()

    def run(self, model: nn.Module, step: int, autocast: contextlib.AbstractContextManager | None = None) -> PreviewRound:
        """Draws the round of `step` and says so (events, TensorBoard); returns what it did."""
        result = PreviewRound(step)
        if not self.items:
            return result
        start = time.perf_counter()
        was_training = model.training
        final = step_folder(self.run_dir, step)
        written: list[tuple[PreviewItem, PreviewFiles]] = []
        try:
            model.eval()
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
            with atomic_folder(final) as tmp, torch.random.fork_rng(devices=devices), torch.no_grad(), \
                    autocast or contextlib.nullcontext():
                torch.manual_seed(self.settings.seed)
                written = self._draw(model, tmp, step, start, result)
                if not written:
                    raise _NothingWritten
        except _NothingWritten:
            pass  # no folder for a round that drew nothing (the event and the warnings say why)
        finally:
            model.train(was_training)
        result.seconds = time.perf_counter() - start
        for item, files in written:
            png = final / files.png.name
            glb = final / files.glb.name if files.glb is not None else None
            result.items.append({"name": item.name, "png": str(png.relative_to(self.run_dir)),
                                 "glb": str(glb.relative_to(self.run_dir)) if glb is not None else None})
            self._tensorboard(item.name, png, files, step)
        self._report(result)
        return result

    def _draw(self, model: nn.Module, folder: Path, step: int, start: float, result: PreviewRound) -> list[tuple[PreviewItem, PreviewFiles]]:
        """Draws the items that fit in the budget into `folder`; records the skipped and failed ones in `result`."""
        written = []
        this_round: list[float] = []
        for item in self.items:
            elapsed = time.perf_counter() - start
            expected = self.durations.get(item.name, float(np.mean(this_round)) if this_round else 0.0)
            first = not this_round and item.name not in self.durations  # the first item of the first round always runs
            if not first and elapsed + expected > self.settings.max_seconds:
                result.skipped.append(item.name)
                continue
            t0 = time.perf_counter()
            try:
                written.append((item, self.recipe.family.preview(self.recipe, model, item, folder, self.settings.seed, step)))
            except Exception as exc:  # a broken preview must not end a training run; it is reported
                result.failed.append((item.name, f"{type(exc).__name__}: {exc}"))
            self.durations[item.name] = time.perf_counter() - t0
            this_round.append(self.durations[item.name])
        return written

    def _report(self, result: PreviewRound) -> None:
        for name, message in result.failed:
            self.emit("warning", step=result.step, message=f"preview of {name} at step {result.step} failed "
                      f"({message}); training goes on without it")
        if result.skipped:
            self.emit("warning", step=result.step, message=(
                f"previews at step {result.step}: skipped {', '.join(result.skipped)}: they would not fit in the "
                f"round's budget `previews.max_seconds` = {self.settings.max_seconds:g} s (this round took "
                f"{result.seconds:.1f} s). Raise `previews.max_seconds` or lower `previews.items`."
            ))
        self.emit("preview", step=result.step, items=result.items, seconds=result.seconds, skipped=result.skipped)

    def _tensorboard(self, name: str, png: Path, files: PreviewFiles, step: int) -> None:
        if self.tensorboard is None:
            return
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        self.tensorboard.add_image(f"preview/{name}", pixels, step, dataformats="HWC")
        if files.mesh is not None:
            vertices, faces, colors = files.mesh
            if len(faces):
                self.tensorboard.add_mesh(
                    f"preview_mesh/{name}", vertices=torch.as_tensor(np.asarray(vertices, np.float32))[None],
                    faces=torch.as_tensor(np.asarray(faces, np.int32))[None],
                    colors=torch.as_tensor(np.asarray(colors, np.uint8))[None], global_step=step,
                )
        self.tensorboard.flush()


__all__ = ["PREVIEWS_DIR", "PreviewRound", "Previewer", "step_folder"]
