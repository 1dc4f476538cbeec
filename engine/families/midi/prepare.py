"""Provides MIDI-3D training-data preparation: raw scenes of meshes (+ image, id map) to normalised surface samples.

MIDI-3D released no training or data-processing code (reference/midi.md §4.1, §5); this is the layout its
data module reads, rebuilt from its documented format (reference/midi.md §2.3, §4.1):

Input ``input_dir/`` holds one scene per entry:
  * a folder of per-instance meshes (``.obj .glb .gltf .ply .stl``; every node of one file is merged into
    one instance), optionally with ``image.png``/``image.jpg`` and ``seg.png``/``mask.png``;
  * a folder holding a single ``.glb``/``.gltf`` file, or such a file directly in ``input_dir``: the scene's
    nodes are the instances (node transforms applied, sorted by node name);
  * any other mesh file directly in ``input_dir``: a one-instance scene.
  TripoSG-style ``.npy`` surface dicts (``surface_points``, ``surface_normals``) are read as ready-sampled
  instances only with ``allow_pickle_npy=True``, because loading them runs pickle.

Id-map convention (MIDI's ``semantic_XXXX.png``): pixel value 0 is background and ``i + 1`` is the
i-th instance in sorted order (sorted by file name, or by node name for a one-file scene).

Output ``output_dir/<scene>/``: ``<instance>.npz`` (float32 ``surface_points`` (N, 3) in [-1, 1] and unit
``surface_normals`` (N, 3)), ``image.png`` (RGB, image_size²), ``seg.png`` (ids, NEAREST-resized) and
``manifest.json``. All instances of a scene share ONE frame (joint bounding-box centre and half of its
largest extent), so the prepared instances compose back into the scene. A scene without an image is
rendered with the software rasteriser from a MIDI-style random camera. Each scene folder appears
atomically (written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from engine.atomic import replace_folder
from engine.errors import DataError
from engine.families.midi.render import render_scene, sample_camera

__all__ = [
    "MESH_SUFFIXES",
    "PrepareProblem",
    "PrepareReport",
    "RawScene",
    "discover_scenes",
    "prepare_dataset",
    "print_report",
]

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl")
_SCENE_FILE_SUFFIXES = (".glb", ".gltf")
_IMAGE_NAMES = ("image.png", "image.jpg", "image.jpeg")
_ID_MAP_NAMES = ("seg.png", "mask.png")
MANIFEST_FORMAT = "lora3d-midi-scene"
MANIFEST_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepareProblem:
    """One thing wrong with one input file."""

    scene: str
    file: str
    """File name inside the scene (or the scene file itself)."""
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.scene}/{self.file}: {self.message}"


@dataclass
class PrepareReport:
    """What prepare_dataset did: scenes written, scenes skipped, and every problem found."""

    input_dir: Path
    output_dir: Path
    prepared: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    problems: list[PrepareProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every scene was prepared (warnings allowed)."""
        return not self.failed

    @property
    def errors(self) -> list[PrepareProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[PrepareProblem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass(frozen=True)
class RawScene:
    """One input scene found by discover_scenes."""

    name: str
    """Output folder name (the input name with unsafe characters replaced)."""
    path: Path
    """A scene folder, or a single mesh file directly in input_dir."""


@dataclass
class _SceneJob:
    source: RawScene
    output_dir: Path
    num_samples: int
    image_size: int
    allow_pickle_npy: bool
    seed: int


@dataclass
class _SceneOutcome:
    scene: str
    ok: bool
    problems: list[PrepareProblem]


@dataclass
class _Instance:
    name: str
    source: str
    mesh: trimesh.Trimesh | None = None
    surface: tuple[np.ndarray, np.ndarray] | None = None
    """Ready-sampled (points (P, 3), normals (P, 3)) from a TripoSG .npy, in the input frame."""


class _Problems:
    """Collects one scene's problems so every bad file is reported, not just the first."""

    def __init__(self, scene: str) -> None:
        self.scene = scene
        self.items: list[PrepareProblem] = []

    def error(self, file: str, message: str) -> None:
        self.items.append(PrepareProblem(self.scene, file, message, "error"))

    def warn(self, file: str, message: str) -> None:
        self.items.append(PrepareProblem(self.scene, file, message, "warning"))

    @property
    def failed(self) -> bool:
        return any(p.severity == "error" for p in self.items)


def _lora3d_version() -> str:
    try:
        return metadata.version("lora3d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "instance"


def discover_scenes(input_dir: str | Path) -> list[RawScene]:
    """List the scenes in `input_dir` (sub-folders and loose mesh files), sorted by name."""
    root = Path(input_dir)
    sources: dict[str, RawScene] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.suffix.lower() in MESH_SUFFIXES:
            name = _safe_name(entry.stem if entry.is_file() else entry.name)
            while name in sources:
                name += "_"
            sources[name] = RawScene(name, entry)
    return list(sources.values())


def _load_nodes(path: Path, problems: _Problems) -> list[tuple[str, trimesh.Trimesh]] | None:
    """Load every triangle-mesh node of a file with its node transform applied; None after an error."""
    try:
        scene = trimesh.load(path, force="scene")
    except Exception as exc:  # trimesh raises many types for corrupt files
        problems.error(path.name, f"could not be read as a mesh, got {type(exc).__name__}: {exc}. Re-export it as OBJ, GLB, PLY or STL")
        return None
    nodes = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geometry = scene.geometry.get(geom_name)
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            nodes.append((str(node), geometry.copy().apply_transform(transform)))
    if not nodes:
        problems.error(path.name, "contains no triangles, got 0 faces. Check the file is a non-empty triangle mesh (point clouds and lines are not supported)")
        return None
    return nodes


def _load_npy_surface(path: Path, allow_pickle_npy: bool, problems: _Problems) -> tuple[np.ndarray, np.ndarray] | None:
    """Read a TripoSG surface .npy: a (P, 6) array, or (with allow_pickle_npy) a pickled dict."""
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError:
        if not allow_pickle_npy:
            problems.error(path.name, "is a pickled .npy (TripoSG's surface dict), got a file that needs pickle to load. Pass `--allow_pickle_npy` only if you trust the file, since unpickling can run code")
            return None
        try:
            data = np.load(path, allow_pickle=True).item()  # explicit opt-in: this unpickles
        except Exception as exc:
            problems.error(path.name, f"could not be unpickled, got {type(exc).__name__}: {exc}. Re-save it as a dict with `surface_points` and `surface_normals`")
            return None
    except Exception as exc:
        problems.error(path.name, f"could not be read as .npy, got {type(exc).__name__}: {exc}. Re-save it with numpy.save")
        return None
    if isinstance(data, dict):
        if "surface_points" not in data or "surface_normals" not in data:
            problems.error(path.name, f"needs keys `surface_points` and `surface_normals`, got {sorted(data)!r}. Save the TripoSG dict layout")
            return None
        points, normals = np.asarray(data["surface_points"]), np.asarray(data["surface_normals"])
    elif isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 6:
        points, normals = data[:, :3], data[:, 3:]
    else:
        problems.error(path.name, f"must hold a (N, 6) array or a surface dict, got {getattr(data, 'shape', type(data).__name__)!r}. Save xyz+normals as (N, 6)")
        return None
    if points.ndim != 2 or points.shape[1] != 3 or points.shape != normals.shape or len(points) == 0:
        problems.error(path.name, f"surface points and normals must both be (N, 3) with N > 0, got {points.shape} and {normals.shape}. Re-sample the surface")
        return None
    if not (np.isfinite(points).all() and np.isfinite(normals).all()):
        problems.error(path.name, "surface points or normals contain NaN or inf, got non-finite values. Re-sample the surface")
        return None
    return points.astype(np.float64), normals.astype(np.float64)


def _load_instances(source: RawScene, allow_pickle_npy: bool, problems: _Problems) -> list[_Instance]:
    """Load a scene's instances in id order (sorted by file name, or node name for a one-file scene)."""
    if source.path.is_file():
        files = [source.path]
        node_mode = source.path.suffix.lower() in _SCENE_FILE_SUFFIXES
    else:
        files = sorted(p for p in source.path.iterdir() if p.is_file() and p.suffix.lower() in (*MESH_SUFFIXES, ".npy"))
        node_mode = len(files) == 1 and files[0].suffix.lower() in _SCENE_FILE_SUFFIXES
    if not files:
        problems.error(".", f"has no mesh files, got an empty scene. Add per-instance meshes ({', '.join(MESH_SUFFIXES)}) or one GLB scene")
        return []
    instances: list[_Instance] = []
    if node_mode:
        nodes = _load_nodes(files[0], problems) or []
        for node, mesh in sorted(nodes, key=lambda item: item[0]):
            instances.append(_Instance(name=_safe_name(node), source=f"{files[0].name}#{node}", mesh=mesh))
    else:
        for path in files:
            if path.suffix.lower() == ".npy":
                surface = _load_npy_surface(path, allow_pickle_npy, problems)
                if surface is not None:
                    instances.append(_Instance(name=_safe_name(path.stem), source=path.name, surface=surface))
                continue
            nodes = _load_nodes(path, problems)
            if nodes:
                mesh = nodes[0][1] if len(nodes) == 1 else trimesh.util.concatenate([m for _, m in nodes])
                instances.append(_Instance(name=_safe_name(path.stem), source=path.name, mesh=mesh))
    seen: set[str] = set()
    for instance in instances:
        while instance.name in seen:
            instance.name += "_"
        seen.add(instance.name)
    return instances


def _check_mesh(instance: _Instance, problems: _Problems) -> bool:
    mesh = instance.mesh
    assert mesh is not None
    if not np.isfinite(mesh.vertices).all():
        problems.error(instance.source, "has NaN or inf vertex coordinates, got non-finite vertices. Repair or re-export the mesh")
        return False
    extent = float(np.ptp(mesh.vertices, axis=0).max()) if len(mesh.vertices) else 0.0
    if mesh.area <= 1e-12 * max(extent, 1e-12) ** 2 or extent == 0.0:
        problems.error(instance.source, f"is degenerate, got surface area {mesh.area!r}. Remove it or replace it with a mesh that has real faces")
        return False
    if mesh.is_watertight:
        mesh.fix_normals()  # consistent outward winding, so face normals point out of the solid
    else:
        _, uses = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
        problems.warn(
            instance.source,
            f"is not watertight ({int((uses == 1).sum())} boundary edges, {int((uses > 2).sum())} non-manifold edges); "
            "its surface is still sampled, but inside/outside is ambiguous for the VAE",
        )
    return True


def _read_rgb(path: Path, problems: _Problems) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")  # MIDI renders on white
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        problems.error(path.name, f"could not be read as an image, got {type(exc).__name__}: {exc}. Save it as PNG or JPEG")
        return None


def _read_id_map(path: Path, problems: _Problems) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            img.load()
            ids = np.array(img)
    except (UnidentifiedImageError, OSError) as exc:
        problems.error(path.name, f"could not be read as an image, got {type(exc).__name__}: {exc}. Save the id map as a single-channel PNG")
        return None
    if ids.ndim == 3:
        channels = ids[..., :3]
        if not (channels == channels[..., :1]).all():
            problems.error(path.name, f"must be single-channel (pixel value = instance id), got a colour image of shape {ids.shape}. Save ids as an 8- or 16-bit grayscale PNG")
            return None
        ids = channels[..., 0]
    return ids.astype(np.int64)


def _scene_image(
    source: RawScene, instances: list[_Instance], meshes: list[trimesh.Trimesh | None], job: _SceneJob, problems: _Problems
) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """Return (rgb (S, S, 3) uint8, ids (S, S), manifest entry) from the given files or a fresh render."""
    size = job.image_size
    folder = source.path if source.path.is_dir() else None
    image_path = next((folder / n for n in _IMAGE_NAMES if folder and (folder / n).is_file()), None)
    id_path = next((folder / n for n in _ID_MAP_NAMES if folder and (folder / n).is_file()), None)
    num_instances = len(instances)
    if image_path is None and id_path is None:
        if any(m is None for m in meshes):
            problems.error(".", "has point-only (.npy) instances and no image, got nothing to render. Add image.png and seg.png")
            return None
        rng = np.random.default_rng([job.seed, zlib.crc32(source.name.encode()), 1])
        camera = sample_camera(rng)
        rgb, ids = render_scene(meshes, image_size=size, elevation_deg=camera.elevation_deg, azimuth_deg=camera.azimuth_deg)
        entry = {"source": "rendered", "camera": {"elevation_deg": camera.elevation_deg, "azimuth_deg": camera.azimuth_deg}}
        return rgb, ids.astype(np.uint8 if num_instances <= 255 else np.uint16), entry
    if image_path is None or id_path is None:
        missing = "image.png" if image_path is None else "seg.png"
        present = (id_path or image_path).name
        problems.error(present, f"has no partner, got no {missing}. MIDI needs both the scene image and its instance-id map; add {missing} or remove {present} to render both")
        return None
    image, ids = _read_rgb(image_path, problems), _read_id_map(id_path, problems)
    if image is None or ids is None:
        return None
    width, height = image.size
    if abs(width - height) > 0.01 * max(width, height):
        problems.error(image_path.name, f"must be square (MIDI trains on square images), got {width}x{height}. Crop or pad it to a square")
        return None
    if ids.shape != (height, width):
        problems.error(id_path.name, f"must have the image's size {width}x{height}, got {ids.shape[1]}x{ids.shape[0]}. Export the id map at the image's resolution")
        return None
    present_ids = np.unique(ids)
    bad = [int(i) for i in present_ids if i < 0 or i > num_instances]
    if bad:
        problems.error(id_path.name, f"has ids that match no instance, got {bad} with {num_instances} instances (valid: 0 = background, 1..{num_instances}). Number instances 1..N in sorted file-name order")
        return None
    missing_ids = sorted(set(range(1, num_instances + 1)) - {int(i) for i in present_ids})
    if missing_ids:
        names = [instances[i - 1].name for i in missing_ids]
        problems.warn(id_path.name, f"shows no pixels for instances {names} (fully occluded or out of view)")
    if width < size:
        problems.warn(image_path.name, f"is {width}px, smaller than image_size {size}; it is upsampled")
    rgb = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    id_dtype = np.uint8 if num_instances <= 255 else np.uint16
    id_image = Image.fromarray(ids.astype(np.int32), mode="I")
    resized_ids = np.asarray(id_image.resize((size, size), Image.Resampling.NEAREST)).astype(id_dtype)
    entry = {"source": "provided", "source_files": [image_path.name, id_path.name], "original_size": [width, height]}
    return rgb, resized_ids, entry


def _prepare_scene(job: _SceneJob) -> _SceneOutcome:
    """Prepare one scene into job.output_dir; never raises for bad input (problems are returned)."""
    source = job.source
    problems = _Problems(source.name)
    try:
        _prepare_scene_checked(job, problems)
    except Exception as exc:  # an unforeseen failure must not take the other scenes down
        problems.error(".", f"failed unexpectedly, got {type(exc).__name__}: {exc}. Check the scene's files; report a bug if they are valid")
    return _SceneOutcome(source.name, not problems.failed, problems.items)


def _prepare_scene_checked(job: _SceneJob, problems: _Problems) -> None:
    source = job.source
    instances = _load_instances(source, job.allow_pickle_npy, problems)
    instances = [i for i in instances if i.mesh is None or _check_mesh(i, problems)]
    if problems.failed or not instances:
        if not problems.failed:
            problems.error(".", "has no usable instances, got 0. Add at least one mesh")
        return

    # 1. One frame for the whole scene: joint bounding box, centred, largest half-extent = 1.
    all_points = [i.mesh.vertices if i.mesh is not None else i.surface[0] for i in instances]
    lo = np.min([p.min(axis=0) for p in all_points], axis=0)
    hi = np.max([p.max(axis=0) for p in all_points], axis=0)
    center, scale = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0
    if scale <= 0.0:
        problems.error(".", f"has zero extent, got bounding box {lo.tolist()}..{hi.tolist()}. Check the meshes' units and content")
        return
    meshes: list[trimesh.Trimesh | None] = []
    for instance in instances:
        if instance.mesh is not None:
            mesh = instance.mesh.copy()
            mesh.apply_translation(-center)
            mesh.apply_scale(1.0 / scale)
            meshes.append(mesh)
        else:
            meshes.append(None)

    # 2. Image and id map (given, or rendered from the normalised meshes).
    image = _scene_image(source, instances, meshes, job, problems)
    if image is None:
        return
    rgb, ids, image_entry = image

    # 3. Area-weighted surface samples with face normals, written under a temporary name.
    scene_key = zlib.crc32(source.name.encode())
    job.output_dir.mkdir(parents=True, exist_ok=True)
    tmp = job.output_dir / f".{source.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        entries = []
        for index, (instance, mesh) in enumerate(zip(instances, meshes)):
            rng = np.random.default_rng([job.seed, scene_key, 2, index])
            if mesh is not None:
                points, face_index = trimesh.sample.sample_surface(mesh, job.num_samples, seed=rng)
                normals = mesh.face_normals[face_index]
            else:
                src_points, src_normals = instance.surface
                if len(src_points) < job.num_samples:
                    problems.warn(instance.source, f"has {len(src_points)} points, fewer than num_samples {job.num_samples}; points are repeated")
                pick = rng.choice(len(src_points), job.num_samples, replace=len(src_points) < job.num_samples)
                points, normals = (src_points[pick] - center) / scale, src_normals[pick]
            normals = normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
            np.savez(tmp / f"{instance.name}.npz", surface_points=points.astype(np.float32), surface_normals=normals.astype(np.float32))
            entry = {"name": instance.name, "id": index + 1, "file": f"{instance.name}.npz", "source": instance.source}
            if mesh is not None:
                entry.update(num_faces=int(len(mesh.faces)), watertight=bool(mesh.is_watertight))
            entries.append(entry)
        Image.fromarray(rgb).save(tmp / "image.png")
        Image.fromarray(ids).save(tmp / "seg.png")
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "lora3d_version": _lora3d_version(),
            "scene": source.name,
            "source": source.path.name,
            "instances": entries,
            "num_samples": job.num_samples,
            "normalization": {"center": center.tolist(), "scale": scale, "formula": "normalized = (original - center) / scale"},
            "image": {"file": "image.png", "size": [job.image_size, job.image_size], **image_entry},
            "id_map": {"file": "seg.png", "background_id": 0, "convention": "pixel value i + 1 = instances[i]"},
            "seed": job.seed,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        replace_folder(tmp, job.output_dir / source.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_arguments(input_dir: Path, output_dir: Path, num_samples: int, image_size: int, workers: int) -> None:
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder does not exist, got {str(input_dir)!r}. Pass `--input_dir` a folder with one sub-folder per scene")
    if output_dir.resolve() == input_dir.resolve():
        raise DataError(f"{output_dir}: output folder is the input folder, got {str(output_dir)!r}. Choose a separate `--output_dir`")
    for key, value, low in (("num_samples", num_samples, 1), ("image_size", image_size, 8), ("workers", workers, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DataError(f"`{key}`: must be an integer >= {low}, got {value!r}. Use e.g. num_samples 20480, image_size 512, workers 2")


def prepare_dataset(
    input_dir: str | Path,
    output_dir: str | Path,
    num_samples: int = 20480,
    image_size: int = 512,
    workers: int = 2,
    allow_pickle_npy: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> PrepareReport:
    """Turn a folder of raw scenes into MIDI training data (see the module docstring for both layouts).

    Args:
        input_dir: folder with one scene per sub-folder (or per loose mesh file).
        output_dir: where prepared scene folders are written (created if missing).
        num_samples: surface samples per instance (MIDI trains with 20480).
        image_size: side of the square output image and id map, pixels (MIDI trains at 512).
        workers: processes preparing scenes in parallel; 1 runs in this process.
        allow_pickle_npy: read TripoSG's pickled `.npy` surface dicts (this unpickles: trusted files only).
        seed: seeds surface sampling and render cameras; the same seed gives the same output.
        progress: show a progress bar (only on a terminal) and print a summary at the end.

    Returns:
        A PrepareReport; `report.ok` is False when any scene failed. Bad scenes never stop the others.

    Raises:
        DataError: a missing input folder, no scenes in it, or an invalid argument.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _check_arguments(input_dir, output_dir, num_samples, image_size, workers)
    sources = discover_scenes(input_dir)
    if not sources:
        raise DataError(f"{input_dir}: no scenes found, got an empty folder. Put one sub-folder of meshes per scene (or GLB scene files) in it")
    report = PrepareReport(input_dir=input_dir, output_dir=output_dir)
    jobs = [_SceneJob(s, output_dir, num_samples, image_size, allow_pickle_npy, seed) for s in sources]
    console = Console(stderr=True)
    with Progress(console=console, disable=not (progress and console.is_terminal), transient=False) as bar:
        task = bar.add_task("Preparing scenes", total=len(jobs))
        if workers == 1 or len(jobs) == 1:
            outcomes = []
            for job in jobs:
                outcomes.append(_prepare_scene(job))
                bar.advance(task)
        else:
            outcomes = []
            # spawn: workers must not inherit the parent's threads (torch, rich) through fork.
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_prepare_scene, job): job for job in jobs}
                for future in as_completed(futures):
                    try:
                        outcomes.append(future.result())
                    except Exception as exc:  # a worker that died (e.g. killed for memory)
                        name = futures[future].source.name
                        outcomes.append(_SceneOutcome(name, False, [PrepareProblem(name, ".", f"worker process failed, got {type(exc).__name__}: {exc}. Rerun with `--workers 1` to see the error")]))
                    bar.advance(task)
    for outcome in sorted(outcomes, key=lambda o: o.scene):
        (report.prepared if outcome.ok else report.failed).append(outcome.scene)
        report.problems.extend(outcome.problems)
    _write_report_file(report)
    if progress:
        print_report(report, console)
    return report


def _write_report_file(report: PrepareReport) -> None:
    report.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "input_dir": str(report.input_dir),
        "prepared": report.prepared,
        "failed": report.failed,
        "problems": [{"scene": p.scene, "file": p.file, "severity": p.severity, "message": p.message} for p in report.problems],
    }
    (report.output_dir / "prepare_report.json").write_text(json.dumps(payload, indent=2) + "\n")


def print_report(report: PrepareReport, console: Console | None = None) -> None:
    """Print a summary table of the scenes and every problem (errors first)."""
    console = console or Console(file=sys.stderr)
    table = Table(title=f"Prepared {len(report.prepared)} of {len(report.prepared) + len(report.failed)} scenes into {report.output_dir}")
    table.add_column("severity")
    table.add_column("scene / file")
    table.add_column("problem")
    for problem in report.errors + report.warnings:
        style = "red" if problem.severity == "error" else "yellow"
        table.add_row(f"[{style}]{problem.severity}[/{style}]", f"{problem.scene}/{problem.file}", problem.message)
    if report.problems:
        console.print(table)
    else:
        console.print(f"[green]{table.title}; no problems.[/green]")
    if report.failed:
        console.print(f"[red]{len(report.failed)} scene(s) failed: {', '.join(report.failed)}. Fix the files above and rerun.[/red]")
