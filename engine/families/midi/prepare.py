"""Provides MIDI-3D training-data preparation: raw scenes of meshes (+ image, id map) to normalised surface samples.

MIDI-3D released no training or data-processing code (reference/midi.md §4.1, §5); this is the layout its
data module reads, rebuilt from its documented format (reference/midi.md §2.3, §4.1):

Input ``input_dir/`` holds one scene per entry:
  * a folder of per-instance meshes (``.3mf .dae .glb .gltf .obj .off .ply .stl``, any letter case; every
    node of one file is merged into one instance), optionally with ``image.png``/``image.jpg`` and
    ``seg.png``/``mask.png``;
  * a folder holding a single scene file (``.glb .gltf .dae .3mf``), or such a file directly in
    ``input_dir``: the scene's nodes are the instances (node transforms applied);
  * any other mesh file directly in ``input_dir``: a one-instance scene.
  TripoSG-style ``.npy`` surface dicts (``surface_points``, ``surface_normals``) are read as ready-sampled
  instances only with ``allow_pickle_npy=True``, because loading them runs pickle.
  Every other entry is skipped and named in the report with the accepted formats (mesh_files.py).

Id-map convention (MIDI's ``semantic_XXXX.png``): pixel value 0 is background and ``i + 1`` is the i-th
instance: sorted by file name, or for a one-file scene by node path in the scene graph (part by part), then
geometry order in the file. Both keys are stable across runs, processes and worker counts, and each
instance's id, node path and visibility in the image are written to the manifest.

Output ``output_dir/<scene>/``: ``<instance>.npz`` (float32 ``surface_points`` (N, 3) in [-1, 1] and unit
``surface_normals`` (N, 3)), ``image.png`` (RGB, image_size²), ``seg.png`` (ids, NEAREST-resized) and
``manifest.json``. All instances of a scene share ONE frame (joint bounding-box centre and half of its
largest extent), so the prepared instances compose back into the scene. A scene without an image is
rendered with the software rasteriser from a MIDI-style random camera. Each scene folder appears
atomically (written under a temporary name, then renamed), and the same inputs and seed give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from engine import input_limits
from engine.atomic import pid_alive, replace_folder
from engine.errors import DataError
from engine.families.midi.mesh_files import (
    ACCEPTED_FORMATS,
    MESH_SUFFIXES,
    SCENE_FILE_SUFFIXES,
    SURFACE_SUFFIX,
    LoadedMesh,
    MeshFileError,
    list_input_folder,
    list_scene_files,
    load_mesh_nodes,
    load_npy_surface,
)
from engine.families.midi.prepare_report import (
    PrepareProblem,
    PrepareReport,
    SceneProblems,
    print_report,
    write_report_file,
)
from engine.families.midi.scene_image import list_names, scene_image, visible_pixels
from engine.families.midi.surface import sample_surface, save_surface_npz

__all__ = [
    "MESH_SUFFIXES",
    "PrepareProblem",
    "PrepareReport",
    "RawScene",
    "discover_scenes",
    "prepare_dataset",
    "print_report",
]

MANIFEST_FORMAT = "lora3d-midi-scene"
MANIFEST_FORMAT_VERSION = 1
_INPUT_DIR_SCENE = "."
"""Scene name of report entries about the input folder itself (files that are no scene)."""
_TMP_SCENE = re.compile(r"\.(?P<scene>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}")
"""A scene folder being written (`_prepare_scene_checked`): hidden, named after the scene and its process."""
MAX_NUM_SAMPLES = 1_000_000
MAX_IMAGE_SIZE = 4096
MAX_WORKERS = 256


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
    details: dict = field(default_factory=dict)
    """Manifest fields that say where the instance came from (node path, geometry, nodes merged, ...)."""


def _lora3d_version() -> str:
    try:
        return metadata.version("lora3d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "instance"


def _discover(root: Path, output_dir: Path | None = None) -> tuple[list[RawScene], list[PrepareProblem]]:
    """Return the scenes of `root` (sorted by name) and a skipped entry for everything else in it."""
    listing = list_input_folder(root, output_dir)
    sources: dict[str, RawScene] = {}
    for entry in listing.inputs:
        name = _safe_name(entry.stem if entry.is_file() else entry.name)
        while name in sources:
            name += "_"
        sources[name] = RawScene(name, entry)
    skipped = [PrepareProblem(_INPUT_DIR_SCENE, name, reason, "skipped") for name, reason in listing.skipped]
    return list(sources.values()), skipped


def discover_scenes(input_dir: str | Path) -> list[RawScene]:
    """List the scenes in `input_dir` (sub-folders and loose mesh files), sorted by name."""
    return _discover(Path(input_dir))[0]


def _header_problem(path: Path) -> str | None:
    """Why a .ply/.npy header declares more than the file holds (or a .ply less), before a reader allocates it."""
    try:
        if path.suffix.lower() == ".ply":
            input_limits.read_ply_header(path)
        elif path.suffix.lower() == SURFACE_SUFFIX:
            input_limits.read_npy_header(path, allow_objects=True)
    except DataError as exc:
        return str(exc).removeprefix(f"{path}: ").rstrip(".")
    return None


def _load_mesh_file(path: Path, problems: SceneProblems) -> LoadedMesh | None:
    """Load one mesh file's nodes, reporting a refusal or dropped faces against the file."""
    if problem := _header_problem(path):
        problems.error(path.name, problem)
        return None
    try:
        loaded = load_mesh_nodes(path)
    except MeshFileError as exc:
        problems.error(path.name, str(exc))
        return None
    if loaded.dropped_faces:
        kept = loaded.total_faces - loaded.dropped_faces
        problems.warn(path.name, f"has {loaded.nonfinite_vertices} vertices with NaN or inf coordinates: dropped the {loaded.dropped_faces} of {loaded.total_faces} faces that use them and prepared the other {kept}. Repair or re-export the mesh to keep them")
    return loaded


def _node_names(paths: list[tuple[str, ...]]) -> list[str]:
    """Name each node by the end of its path, taking in parent names only where names would collide."""
    depth = [1] * len(paths)
    while True:
        names = ["-".join(_safe_name(part) for part in path[-d:]) for path, d in zip(paths, depth)]
        counts = Counter(names)
        grow = [i for i, name in enumerate(names) if counts[name] > 1 and depth[i] < len(paths[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def _load_instances(files: list[Path], allow_pickle_npy: bool, problems: SceneProblems) -> list[_Instance]:
    """Load a scene's instances in id order (sorted by file name, or by node path for a one-file scene)."""
    if not files:
        problems.error(".", f"has no mesh files, got an empty scene. Add per-instance meshes or one scene file; accepted: {ACCEPTED_FORMATS}")
        return []
    node_mode = len(files) == 1 and files[0].suffix.lower() in SCENE_FILE_SUFFIXES
    instances: list[_Instance] = []
    for path in files:
        if path.suffix.lower() == SURFACE_SUFFIX:
            if problem := _header_problem(path):
                problems.error(path.name, problem)
                continue
            try:
                surface = load_npy_surface(path, allow_pickle_npy)
            except MeshFileError as exc:
                problems.error(path.name, str(exc))
                continue
            if surface.dropped_points:
                problems.warn(path.name, f"has {surface.dropped_points} of {surface.dropped_points + len(surface.points)} points with zero-length normals; those points were dropped")
            instances.append(_Instance(_safe_name(path.stem), path.name, surface=(surface.points, surface.normals)))
            continue
        loaded = _load_mesh_file(path, problems)
        if loaded is None:
            continue
        if node_mode:
            names = _node_names([node.path for node in loaded.nodes])
            for name, node in zip(names, loaded.nodes):
                details = {"node_path": node.path_text, "geometry": node.geometry}
                instances.append(_Instance(name, f"{path.name}#{node.path_text}", node.mesh, details=details))
        else:
            meshes = [n.mesh for n in loaded.nodes]
            mesh = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)
            instances.append(_Instance(_safe_name(path.stem), path.name, mesh, details={"num_nodes": len(meshes)}))
        if loaded.dropped_faces:
            instances[-1].details["dropped_faces"] = loaded.dropped_faces
    seen: set[str] = set()
    for instance in instances:  # in id order, so the renaming is as stable as the order
        while instance.name in seen:
            instance.name += "_"
        seen.add(instance.name)
    return instances


def _check_mesh(instance: _Instance, problems: SceneProblems) -> bool:
    mesh = instance.mesh
    assert mesh is not None
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


def _prepare_scene(job: _SceneJob) -> _SceneOutcome:
    """Prepare one scene into job.output_dir; never raises for bad input (problems are returned)."""
    source = job.source
    problems = SceneProblems(source.name)
    try:
        _prepare_scene_checked(job, problems)
    except Exception as exc:  # an unforeseen failure must not take the other scenes down
        problems.error(".", f"failed unexpectedly, got {type(exc).__name__}: {exc}. Check the scene's files; report a bug if they are valid")
    return _SceneOutcome(source.name, not problems.failed, problems.items)


def _prepare_scene_checked(job: _SceneJob, problems: SceneProblems) -> None:
    source = job.source
    image_path = id_path = None
    if source.path.is_file():
        files = [source.path]
    else:
        listing = list_scene_files(source.path)
        for name, reason in listing.skipped:
            problems.skip(name, reason)
        files, image_path, id_path = listing.inputs, listing.image, listing.id_map
    instances = _load_instances(files, job.allow_pickle_npy, problems)
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
            meshes.append(trimesh.Trimesh((instance.mesh.vertices - center) / scale, instance.mesh.faces, process=False))
        else:
            meshes.append(None)

    # 2. Image and id map (given, or rendered from the normalised meshes); which instances they show.
    camera_rng = np.random.default_rng([job.seed, zlib.crc32(source.name.encode()), 1])
    image = scene_image(image_path, id_path, meshes, job.image_size, camera_rng, problems)
    if image is None:
        return
    rgb, ids, image_entry = image
    pixels = visible_pixels(ids, [i.name for i in instances], image_entry, id_path, problems)

    # 3. Area-weighted surface samples with unit normals from each mesh's own geometry (surface.py), mapped
    #    into the scene frame, written under a temporary name.
    scene_key = zlib.crc32(source.name.encode())
    job.output_dir.mkdir(parents=True, exist_ok=True)
    tmp = job.output_dir / f".{source.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        entries = []
        for index, instance in enumerate(instances):
            rng = np.random.default_rng([job.seed, scene_key, 2, index])
            if instance.mesh is not None:
                points, normals = sample_surface(instance.mesh, job.num_samples, rng)
            else:
                points, normals = instance.surface
                if len(points) < job.num_samples:
                    problems.warn(instance.source, f"has {len(points)} points, fewer than num_samples {job.num_samples}; points are repeated")
                pick = rng.choice(len(points), job.num_samples, replace=len(points) < job.num_samples)
                points, normals = points[pick], normals[pick]
            points = (points - center) / scale
            save_surface_npz(tmp / f"{instance.name}.npz", surface_points=points.astype(np.float32), surface_normals=normals.astype(np.float32))
            entry = {"name": instance.name, "id": index + 1, "file": f"{instance.name}.npz", "source": instance.source, **instance.details}
            if instance.mesh is not None:
                entry.update(num_faces=int(len(instance.mesh.faces)), watertight=bool(instance.mesh.is_watertight))
            entry.update(pixels=int(pixels[index]), visible=bool(pixels[index] > 0))
            entries.append(entry)
        Image.fromarray(rgb).save(tmp / "image.png")
        Image.fromarray(ids).save(tmp / "seg.png")
        one_file = len(files) == 1 and files[0].suffix.lower() in SCENE_FILE_SUFFIXES
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "lora3d_version": _lora3d_version(),
            "scene": source.name,
            "source": source.path.name,
            "instances": entries,
            "num_samples": job.num_samples,
            "normalization": {"center": center.tolist(), "scale": scale, "formula": "normalized = (original - center) / scale"},
            "image": {"file": "image.png", "size": [job.image_size, job.image_size], **image_entry,
                      "visible_instances": int((pixels > 0).sum())},
            "id_map": {"file": "seg.png", "background_id": 0, "convention": "pixel value i + 1 = instances[i]",
                       "id_order": "node path in the scene graph (part by part), then geometry order in the file"
                       if one_file else "file name"},
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
    limits = (("num_samples", num_samples, 1, MAX_NUM_SAMPLES), ("image_size", image_size, 8, MAX_IMAGE_SIZE),
              ("workers", workers, 1, MAX_WORKERS))
    for key, value, low, high in limits:
        # The upper bounds are checked before anything is allocated: image_size 10^6 would render 10^12 pixels.
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise DataError(f"`{key}`: must be an integer in {low}..{high}, got {value!r}. Use e.g. num_samples 20480, image_size 512, workers 2")


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
    sources, skipped = _discover(input_dir, output_dir)
    if not sources:
        got = f"only entries that are not read: {list_names([p.file for p in skipped])}" if skipped else "an empty folder"
        raise DataError(f"{input_dir}: no scenes found, got {got}. Put one sub-folder of meshes per scene (or scene files) in it; accepted: {ACCEPTED_FORMATS}")
    report = PrepareReport(input_dir=input_dir, output_dir=output_dir, problems=list(skipped) + _clean_stale(output_dir))
    jobs = [_SceneJob(s, output_dir, num_samples, image_size, allow_pickle_npy, seed) for s in sources]
    console = Console(stderr=True)
    with Progress(console=console, disable=not (progress and console.is_terminal), transient=False) as bar:
        task = bar.add_task("Preparing scenes", total=len(jobs))
        outcomes = []
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                outcomes.append(_prepare_scene(job))
                bar.advance(task)
        else:
            # Largest scenes first, so no long scene starts last while the other worker idles. The order of
            # work never reaches the output: each scene is seeded by its name and outcomes are sorted.
            ordered = sorted(jobs, key=lambda job: -_input_bytes(job.source.path))
            # spawn: workers must not inherit the parent's threads (torch, rich) through fork.
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_prepare_scene, job): job for job in ordered}
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
    write_report_file(report)
    if progress:
        print_report(report, console)
    return report


def _clean_stale(output_dir: Path) -> list[PrepareProblem]:
    """Removes the temporary scene folders of runs that were killed (their process is gone), and says so."""
    if not output_dir.is_dir():
        return []
    notes = []
    for entry in sorted(output_dir.iterdir()):
        match = _TMP_SCENE.fullmatch(entry.name)
        if match and entry.is_dir() and not pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            notes.append(PrepareProblem(match["scene"], entry.name, f"removed the temporary folder of an interrupted run (process {match['pid']} no longer runs)", "warning"))
    return notes


def _input_bytes(path: Path) -> int:
    """Bytes of a scene's input files: a cheap stand-in for how long the scene takes to prepare."""
    try:
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        return sum(p.stat().st_size for p in files)
    except OSError:
        return 0


