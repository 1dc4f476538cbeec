"""Provides the MIDI training data: one sample per prepared scene, collated in MIDI's training layout.

A sample is one scene with exactly K = `num_instances_per_batch` slots (MIDI's `padding: true`): a scene
with fewer than K instances is padded with random duplicates of its own instances, a scene with more is
randomly sub-sampled to K; `num_instances` keeps the real count, so multi-instance attention lets only
the real instances see each other and the loss skips the padding. The choice is a function of
(seed, epoch, scene index), so a resumed run sees the same instances.

With the latent cache (default) a sample holds the cached VAE posterior and condition tokens; without
it, the raw surfaces and images, encoded on the fly by the task.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from engine.atomic import publish_folder
from engine.cache import cache_root
from engine.errors import DataError
from engine.families.midi.latents import (
    ConditionCache,
    FrozenParts,
    PosteriorCache,
    scene_condition_inputs,
    scene_surfaces,
)
from engine.families.midi.scene_data import PreparedScene, list_prepared_scenes, load_prepared_scene

__all__ = [
    "MidiDataReport",
    "SceneRef",
    "MidiSceneDataset",
    "choose_instances",
    "collate_scenes",
    "scan_scenes",
    "split_scene_folders",
    "synthetic_prepared_scenes",
]

GT_POINTS = 2048
"""Ground-truth surface points per instance kept for the Chamfer evaluation."""


def choose_instances(num_instances: int, slots: int, seed: int, epoch: int, index: int) -> tuple[list[int], int]:
    """The instance indices filling a scene's `slots` and the number of real ones among them.

    Fewer instances than slots: all instances in order, then random duplicates (padding). More: a random
    subset of `slots` instances. Deterministic in (seed, epoch, index).
    """
    rng = np.random.default_rng([seed, epoch, index, 0x4D1D1])
    if num_instances >= slots:
        chosen = sorted(rng.choice(num_instances, slots, replace=False).tolist())
        return chosen, slots
    pad = rng.integers(0, num_instances, slots - num_instances).tolist()
    return list(range(num_instances)) + pad, num_instances


def split_scene_folders(root: Path, train_split: str, val_split: str | None, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Train and validation scene folders under `root`.

    `root/<train_split>/` and `root/<val_split>/` are used when they exist; otherwise the scenes directly
    under `root` (what `scripts/prepare_data.py` writes) are split by name, the last `val_fraction` of
    them for validation (as MIDI holds out its last rooms).
    """
    train_dir = root / train_split
    if train_dir.is_dir():
        train = list_prepared_scenes(train_dir)
        val_dir = root / val_split if val_split else None
        val = list_prepared_scenes(val_dir) if val_dir is not None and val_dir.is_dir() else []
        return train, val
    scenes = list_prepared_scenes(root)
    num_val = math.ceil(len(scenes) * val_fraction) if val_split and len(scenes) > 1 else 0
    num_val = min(num_val, len(scenes) - 1)
    return scenes[: len(scenes) - num_val], scenes[len(scenes) - num_val :]


@dataclass
class SceneRef:
    """What a cached sample needs of a prepared scene: its folder and manifest, not its arrays."""

    name: str
    folder: Path
    manifest: dict
    num_instances: int


class MidiSceneDataset(torch.utils.data.Dataset):
    """Prepared scenes as training samples in MIDI's layout.

    Args:
        folders: prepared scene folders.
        slots: K, instance slots per scene.
        seed: seed of the padding / sub-sampling choice.
        frozen: the frozen VAE and encoders (needed to fill the caches; None when not caching).
        cache_dir: where the caches live; None encodes nothing here (the task encodes on the fly).
        num_tokens: latent tokens T.
        num_samples: surface points per instance (None = all prepared points).
        on_error: `stop` raises on a bad scene; `skip` drops it and records it in `skipped`.
        keep_gt: include ground-truth surface points (validation / Chamfer).
    """

    def __init__(
        self,
        folders: list[Path],
        slots: int,
        seed: int,
        frozen: FrozenParts | None,
        cache_dir: Path | None,
        num_tokens: int,
        num_samples: int | None,
        on_error: str = "stop",
        keep_gt: bool = False,
    ) -> None:
        self.slots = slots
        self.seed = seed
        self.epoch = 0
        self.num_tokens = num_tokens
        self.num_samples = num_samples
        self.keep_gt = keep_gt
        self.skipped: list[str] = []
        self.scenes: list[SceneRef] = []
        self.posteriors: PosteriorCache | None = None
        self.conditions: ConditionCache | None = None
        if cache_dir is not None and frozen is not None:
            self.posteriors = PosteriorCache(cache_dir, frozen.vae, num_tokens, num_samples)
            self.conditions = ConditionCache(cache_dir, frozen)
        for folder in folders:
            try:
                scene = load_prepared_scene(folder)
                if num_samples is not None and len(scene.surface_points[0]) < num_samples:
                    raise DataError(
                        f"{folder.name}: instances hold {len(scene.surface_points[0])} surface points, fewer than "
                        f"`data.num_samples` = {num_samples}. Lower `data.num_samples` or re-prepare with more points."
                    )
            except DataError as exc:
                if on_error == "stop":
                    raise
                self.skipped.append(str(exc))
                continue
            if self.posteriors is not None and self.conditions is not None:
                self.posteriors.fill(scene)
                self.conditions.fill(scene)
            # Only the manifest stays in memory; the arrays are read again when a sample needs them.
            self.scenes.append(SceneRef(scene.name, scene.folder, scene.manifest, scene.num_instances))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.scenes[index]
        chosen, real = choose_instances(ref.num_instances, self.slots, self.seed, self.epoch, index)
        scene: SceneRef | PreparedScene = ref
        if self.posteriors is None or self.keep_gt:
            scene = load_prepared_scene(ref.folder)
        sample: dict[str, Any] = {"num_instances": real, "scene": scene.name}
        if self.posteriors is not None and self.conditions is not None:
            sample["latent_mean"], sample["latent_logvar"] = self.posteriors.load(scene, chosen)
            clip, sample["dino"] = self.conditions.load(scene, chosen)
            if clip is not None:
                sample["clip"] = clip
        else:
            sample["surface"] = scene_surfaces(scene, self.num_samples)[chosen]
            instance_images, scene_images, masks = scene_condition_inputs(scene)
            sample["instance_images"] = instance_images[chosen]
            sample["scene_images"] = scene_images[chosen]
            sample["masks"] = masks[chosen]
        if self.keep_gt:
            sample["gt_points"] = torch.stack(
                [torch.from_numpy(scene.surface_points[i][:GT_POINTS]) for i in chosen]
            )  # (K, G, 3)
        return sample


def collate_scenes(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """B scenes of K slots -> MIDI's flat (B*K, ...) batch plus `num_instances` (B,) and `real` (B*K,) mask."""
    slots = len(next(v for k, v in samples[0].items() if isinstance(v, torch.Tensor)))
    batch: dict[str, Any] = {}
    for key, value in samples[0].items():
        if isinstance(value, torch.Tensor):
            batch[key] = torch.cat([s[key] for s in samples], dim=0)
    counts = torch.tensor([s["num_instances"] for s in samples], dtype=torch.long)
    batch["num_instances"] = counts
    batch["num_instances_per_batch"] = slots
    batch["real"] = (torch.arange(slots)[None, :] < counts[:, None]).reshape(-1)
    batch["scenes"] = [s["scene"] for s in samples]
    return batch


def synthetic_prepared_scenes(
    domain: str, num_train: int, num_val: int, seed: int, image_size: int, num_samples: int, root: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """Synthetic scenes of `domain` written as raw meshes and run through `prepare_dataset`, once.

    They live under `root` (default `$LORA3D_CACHE/midi-synthetic/`) in a folder named by the settings;
    a finished folder is reused. Validation scenes use a different seed than training scenes.
    """
    # lazy: trimesh and the rasteriser, needed only to build the synthetic scenes once
    from engine.families.midi.prepare import prepare_dataset
    from engine.families.midi.synthetic import write_synthetic_raw_scenes

    base = Path(root) if root is not None else cache_root() / "midi-synthetic"
    folder = base / f"{domain}-seed{seed}-train{num_train}-val{num_val}-img{image_size}-pts{num_samples}"
    if not (folder / "DONE").is_file():
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
        for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 7919)):
            if count == 0:
                continue
            raw = tmp / "raw" / split
            write_synthetic_raw_scenes(raw, count, domain=domain, seed=split_seed, image_size=image_size)
            report = prepare_dataset(raw, tmp / split, num_samples=num_samples, image_size=image_size, workers=1,
                                     seed=split_seed, progress=False)
            if not report.ok:
                raise DataError(f"{tmp / split}: synthetic scenes failed to prepare, got {report.failed}. Report this bug.")
        shutil.rmtree(tmp / "raw", ignore_errors=True)
        (tmp / "DONE").write_text("ok\n")
        publish_folder(tmp, folder)
    train = list_prepared_scenes(folder / "train")
    val = list_prepared_scenes(folder / "val") if (folder / "val").is_dir() else []
    return train, val


@dataclass
class MidiDataReport:
    """What `scan_scenes` found: scene and instance counts per split, and every problem."""

    root: str
    slots: int
    scenes: dict[str, int] = field(default_factory=dict)
    instances: dict[str, dict[str, int]] = field(default_factory=dict)
    surface_points: int | None = None
    subsampled_scenes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "ok": self.ok, "num_instances_per_batch": self.slots, "scenes": dict(self.scenes),
            "instances": {k: dict(v) for k, v in self.instances.items()}, "surface_points": self.surface_points,
            "subsampled_scenes": self.subsampled_scenes, "problems": [list(p) for p in self.problems],
        }

    def render(self, console: Any) -> None:
        table = Table(title=f"MIDI data: {self.root}")
        for column in ("split", "scenes", "instances", "min/scene", "max/scene"):
            table.add_column(column)
        for split, count in self.scenes.items():
            inst = self.instances.get(split, {})
            table.add_row(split, str(count), str(inst.get("total", 0)), str(inst.get("min", "-")), str(inst.get("max", "-")))
        console.print(table)
        console.print(f"surface points per instance: {self.surface_points}; scenes with more than "
                      f"`model.num_instances_per_batch` = {self.slots} instances (sub-sampled): {self.subsampled_scenes}")
        for scene, message in self.problems:
            console.print(f"[red]problem[/red] {scene}: {message}")
        if self.ok:
            console.print("[green]no problems found[/green]")


def scan_scenes(root: str, splits: dict[str, list[Path]], slots: int, num_samples: int | None) -> MidiDataReport:
    """Loads and validates every prepared scene; collects counts and problems instead of stopping."""
    report = MidiDataReport(root=root, slots=slots)
    for split, folders in splits.items():
        counts = []
        for folder in folders:
            try:
                scene = load_prepared_scene(folder)
            except DataError as exc:
                report.problems.append((folder.name, str(exc)))
                continue
            counts.append(scene.num_instances)
            points = len(scene.surface_points[0])
            report.surface_points = points if report.surface_points is None else min(report.surface_points, points)
            if num_samples is not None and points < num_samples:
                report.problems.append((folder.name, f"{points} surface points per instance, fewer than "
                                        f"`data.num_samples` = {num_samples}. Lower it or re-prepare with more points"))
            report.subsampled_scenes += int(scene.num_instances > slots)
        report.scenes[split] = len(folders)
        report.instances[split] = {"total": sum(counts), "min": min(counts, default=0), "max": max(counts, default=0)}
    return report
