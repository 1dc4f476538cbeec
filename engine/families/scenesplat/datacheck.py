"""Provides the SceneSplat dataset check: every scene loaded and validated, with counts and a label histogram.

`lora3d data-check` and the wizard's data screen call `scan_dataset` and show `DataReport.render`
or `DataReport.to_dict()`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from engine.errors import DataError
from engine.families.scenesplat.data import IGNORE_INDEX, LABEL_KEYS, build_sample, load_scene
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES, write_synthetic_dataset


@dataclass
class DataReport:
    """What `scan_dataset` found.

    Attributes:
        root: the dataset root.
        label_key: the label file counted.
        scenes: split -> number of scene folders (good or bad).
        points: split -> {"min", "median", "max", "total"} Gaussians per good scene.
        label_histogram: class id -> Gaussian count over all good scenes (-1 = ignore).
        labelled_scenes: good scenes that have the label file.
        lang_feat_dim: dimension of `lang_feat` when the scenes have it, else None.
        problems: (scene folder, file, message) for every problem found.
    """

    root: str
    label_key: str
    scenes: dict[str, int] = field(default_factory=dict)
    points: dict[str, dict[str, float]] = field(default_factory=dict)
    label_histogram: dict[int, int] = field(default_factory=dict)
    labelled_scenes: int = 0
    lang_feat_dim: int | None = None
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (histogram keys become strings)."""
        return {
            "root": self.root,
            "label_key": self.label_key,
            "ok": self.ok,
            "scenes": dict(self.scenes),
            "points": {k: dict(v) for k, v in self.points.items()},
            "label_histogram": {str(k): int(v) for k, v in sorted(self.label_histogram.items())},
            "labelled_scenes": self.labelled_scenes,
            "lang_feat_dim": self.lang_feat_dim,
            "problems": [list(p) for p in self.problems],
        }

    def render(self, console: Any, class_names: list[str] | None = None) -> None:
        """Prints the report as rich tables on `console` (a rich.console.Console)."""
        splits = Table(title=f"Dataset {self.root}", title_justify="left")
        for col in ("split", "scenes", "min pts", "median pts", "max pts", "total pts"):
            splits.add_column(col, justify="left" if col == "split" else "right")
        for split, count in self.scenes.items():
            p = self.points.get(split, {})
            splits.add_row(
                split,
                str(count),
                *(f"{int(p[k]):,}" if k in p else "-" for k in ("min", "median", "max", "total")),
            )
        console.print(splits)
        labels = Table(title=f"Labels (`{self.label_key}`)", title_justify="left")
        labels.add_column("class", justify="right")
        labels.add_column("name")
        labels.add_column("points", justify="right")
        labels.add_column("share", justify="right")
        total = max(sum(self.label_histogram.values()), 1)
        for cls, count in sorted(self.label_histogram.items()):
            if cls == IGNORE_INDEX:
                name = "ignore"
            elif class_names is not None and 0 <= cls < len(class_names):
                name = class_names[cls]
            else:
                name = ""
            labels.add_row(str(cls), name, f"{count:,}", f"{100 * count / total:.1f}%")
        console.print(labels)
        if self.problems:
            problems = Table(title=f"{len(self.problems)} problem(s)", title_justify="left", style="red")
            problems.add_column("scene")
            problems.add_column("file")
            problems.add_column("message", overflow="fold")
            for scene, file, message in self.problems:
                problems.add_row(scene, file, message)
            console.print(problems)
        else:
            console.print("[green]No problems found.[/green]")


def file_of(message: str, folder: Path) -> str:
    """The file a DataError message names (its text before the first ': '), relative to the scene."""
    head = message.split(": ", 1)[0]
    try:
        return str(Path(head).relative_to(folder))
    except ValueError:
        return "" if head == str(folder) else head


def point_stats(counts: list[int]) -> dict[str, int | float]:
    """{"min", "median", "max", "total"} of per-scene point counts (a `DataReport.points` entry)."""
    return {
        "min": int(np.min(counts)),
        "median": float(np.median(counts)),
        "max": int(np.max(counts)),
        "total": int(np.sum(counts)),
    }


def count_labels(labels: np.ndarray, histogram: dict[int, int]) -> np.ndarray:
    """Adds a scene's labels to `histogram` (every negative label counted as ignore); returns the distinct ones."""
    labels = labels.astype(np.int64)
    labels[labels < 0] = IGNORE_INDEX
    values, n = np.unique(labels, return_counts=True)
    for v, c in zip(values.tolist(), n.tolist()):
        histogram[v] = histogram.get(v, 0) + c
    return values


def scan_scenes(
    root: str | Path,
    splits: tuple[str, ...] | list[str],
    label_key: str,
    num_classes: int | None,
    read_scene: Callable[[Path], dict[str, np.ndarray]],
    classes_key: str = "num_classes",
) -> tuple[DataReport, list[str]]:
    """Loads and validates every scene folder of the given splits with `read_scene`.

    Args:
        root: dataset root holding the split folders.
        splits: split folders to scan; a missing one is a problem, not an error.
        label_key: `segment`, `segment20` or `segment200`.
        num_classes: when set, labels outside [0, num_classes) other than -1 are problems.
        read_scene: loads and validates one scene folder, raising DataError naming the file.
        classes_key: the profile key an out-of-range label's message tells the user to raise.

    Returns:
        The report and the names of the good scenes without `label_key`.

    Raises:
        DataError: the root folder is missing or `label_key` is unknown.
    """
    root = Path(root)
    if label_key not in LABEL_KEYS:
        raise DataError(
            f"label_key: unknown label file, got {label_key!r}. Use one of {', '.join(LABEL_KEYS)}."
        )
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset root is missing, got no such folder. Check `data.root` in the profile."
        )
    report = DataReport(root=str(root), label_key=label_key)
    histogram: dict[int, int] = {}
    unlabelled: list[str] = []
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            report.scenes[split] = 0
            report.problems.append(
                (str(split_dir), "", f"{split_dir}: split folder is missing. Create it or drop `{split}`.")
            )
            continue
        folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        report.scenes[split] = len(folders)
        if not folders:
            report.problems.append(
                (str(split_dir), "", f"{split_dir}: split has no scene folders. Add scenes.")
            )
        counts: list[int] = []
        for folder in folders:
            try:
                scene = read_scene(folder)
            except DataError as err:
                report.problems.append((str(folder), file_of(str(err), folder), str(err)))
                continue
            counts.append(len(scene["coord"]))
            if "lang_feat" in scene:
                report.lang_feat_dim = int(scene["lang_feat"].shape[1])
            if label_key not in scene:
                unlabelled.append(folder.name)
                continue
            report.labelled_scenes += 1
            values = count_labels(scene[label_key], histogram)
            if num_classes is not None:
                bad = values[(values >= num_classes)]
                if len(bad):
                    report.problems.append(
                        (
                            str(folder),
                            f"{label_key}.npy",
                            f"{folder / (label_key + '.npy')}: labels outside [0, {num_classes}), got {bad.tolist()!r}. "
                            f"Map them to -1 (ignore) or raise `{classes_key}`.",
                        )
                    )
        if counts:
            report.points[split] = point_stats(counts)
    report.label_histogram = dict(sorted(histogram.items()))
    return report, unlabelled


def scan_dataset(
    root: str | Path,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
    label_key: str = "segment",
    num_classes: int | None = None,
) -> DataReport:
    """Loads and validates every SceneSplat scene of the given splits (see `scan_scenes`).

    Returns:
        The report; `report.ok` is False when any problem was found.

    Raises:
        DataError: the root folder is missing or `label_key` is unknown.
    """

    def read_scene(folder: Path) -> dict[str, np.ndarray]:
        scene = load_scene(folder)
        build_sample(scene, folder.name, label_key, folder=folder)
        return scene

    return scan_scenes(root, splits, label_key, num_classes, read_scene)[0]


class NamedReport:
    """A data-check report that renders with the profile's class names."""

    def __init__(self, report: Any, class_names: list[str] | None) -> None:
        self.report = report
        self.class_names = class_names

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out["class_names"] = self.class_names
        return out

    def render(self, console: Any) -> None:
        self.report.render(console, class_names=self.class_names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.report, name)


def check_data(profile: Any, num_classes: int | None, class_names: list[str] | None, lang_dim: int | None) -> NamedReport:
    """The data check of a resolved profile: its `data.root`, or the built-in rooms written to a temp folder.

    Args:
        profile: the resolved profile.
        num_classes: the semseg head's classes (None for lang: labels are not range-checked).
        class_names: names for the label histogram.
        lang_dim: the language-feature width of the synthetic rooms (lang), or None.
    """
    data = profile.data
    if data.root is not None:
        splits = [s for s in (data.train_split, data.val_split) if s is not None]
        return NamedReport(scan_dataset(data.root, splits, data.label_key, num_classes),
                           class_names if num_classes else None)
    with tempfile.TemporaryDirectory(prefix="lora3d-synthetic-") as tmp:
        root = Path(tmp) / "rooms"
        write_synthetic_dataset(root, data.synthetic_train, data.synthetic_val if data.val_split else 0,
                                data.synthetic_domain, data.synthetic_seed, data.synthetic_points,
                                lang_dim=lang_dim, domain_shift=data.synthetic_shift)
        report = scan_dataset(root, ["train", "val"] if data.val_split else ["train"], "segment",
                              len(SYNTHETIC_CLASSES))
    report.root = f"built-in synthetic rooms (domain {data.synthetic_domain})"
    return NamedReport(report, list(SYNTHETIC_CLASSES))
