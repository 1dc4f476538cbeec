"""Provides the reading of raw mesh files for MIDI data preparation: formats, stable instance order, skipped files.

trimesh reads every format; this module adds what data preparation needs on top of it:

* Keys that do not change between loads. trimesh names the frame of each primitive of a multi-primitive
  glTF mesh ``<node>_<6 random hex digits>`` (trimesh 4-5, exchange/gltf ``util.unique_id``), so those
  names differ on every load. Such a frame is named after its geometry instead, and nodes are ordered by
  their node path in the scene graph (compared part by part), then by the geometry's order in the file.
* Faces that use NaN or inf vertex coordinates are dropped *and counted*: trimesh's own processing
  drops them without a word.
* A glTF buffer that trimesh would refuse (a symbolic link out of the folder, a uri leading out of it,
  a missing file) is named with its real cause before loading.
* Every file of an input folder is either read or listed with the reason it is skipped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import trimesh

__all__ = [
    "ACCEPTED_FORMATS",
    "MESH_SUFFIXES",
    "SCENE_FILE_SUFFIXES",
    "LoadedMesh",
    "MeshFileError",
    "MeshNode",
    "SceneFiles",
    "Surface",
    "gltf_buffer_names",
    "list_input_folder",
    "list_scene_files",
    "load_mesh_nodes",
    "load_npy_surface",
    "skip_reason",
]

MESH_SUFFIXES = (".3mf", ".dae", ".glb", ".gltf", ".obj", ".off", ".ply", ".stl")
SCENE_FILE_SUFFIXES = (".3mf", ".dae", ".glb", ".gltf")
"""Formats with a node graph: one such file alone in a scene has one instance per node."""
SURFACE_SUFFIX = ".npy"
IMAGE_NAMES = ("image.png", "image.jpg", "image.jpeg")
ID_MAP_NAMES = ("seg.png", "mask.png")
ACCEPTED_FORMATS = (
    f"meshes {' '.join(MESH_SUFFIXES)} (any letter case); in a scene folder also {SURFACE_SUFFIX} surfaces, "
    f"{'/'.join(IMAGE_NAMES)} and {'/'.join(ID_MAP_NAMES)}"
)
_APPEARANCE_SUFFIXES = (".mtl", ".png", ".jpg", ".jpeg", ".tga", ".bmp", ".tif", ".tiff", ".webp", ".ktx2", ".dds")
_RANDOM_PRIMITIVE_FRAME = r"_[0-9a-f]{6}"


class MeshFileError(ValueError):
    """A mesh file that cannot be prepared; the message says why and how to fix it (no file name)."""


@dataclass
class MeshNode:
    """One triangle mesh of a file, with its node transform applied."""

    path: tuple[str, ...]
    """Node path in the scene graph below the root, stable across loads."""
    geometry: str
    geometry_index: int
    """Position of the geometry in the file (trimesh keeps the file's order)."""
    mesh: trimesh.Trimesh

    @property
    def key(self) -> tuple[tuple[str, ...], int]:
        """Sort key: node path part by part, then geometry order."""
        return self.path, self.geometry_index

    @property
    def path_text(self) -> str:
        return "/".join(self.path)


@dataclass
class LoadedMesh:
    """All triangle meshes of one file, in stable order, and what was dropped on the way."""

    nodes: list[MeshNode]
    total_faces: int
    """Faces in the file before faces with non-finite vertices were dropped."""
    dropped_faces: int = 0
    nonfinite_vertices: int = 0


@dataclass
class Surface:
    """A ready-sampled surface read from a TripoSG-style .npy, in the file's frame."""

    points: np.ndarray
    """(P, 3) float64."""
    normals: np.ndarray
    """(P, 3) float64, unit length."""
    dropped_points: int = 0
    """Points dropped because their normal had zero length."""


@dataclass
class SceneFiles:
    """The entries of one folder, sorted into what is read and what is skipped."""

    inputs: list[Path] = field(default_factory=list)
    """In a scene folder: mesh and surface files, sorted by name (instance id order in a multi-file scene).
    In the input folder: scene folders and scene files, sorted by name."""
    image: Path | None = None
    id_map: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file name, reason) for every entry that is not read."""


def _nonfinite_message(bad_vertices: int, total_faces: int) -> str:
    return (f"has {bad_vertices} vertices with NaN or inf coordinates and every one of its {total_faces} faces "
            "uses one, got no finite face. Repair or re-export the mesh")


def gltf_buffer_names(path: Path) -> list[str]:
    """Return the external buffer files a .gltf reads (relative uris, decoded); [] if it cannot be parsed."""
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []  # trimesh's load names the real problem
    buffers = header.get("buffers", []) if isinstance(header, dict) else []
    uris = [b.get("uri") for b in buffers if isinstance(b, dict)]
    return [unquote(uri) for uri in uris if isinstance(uri, str) and uri and not uri.startswith("data:")]


def _check_gltf_buffers(path: Path) -> None:
    """Raise MeshFileError for a buffer trimesh would refuse or miss, naming the real cause."""
    base = Path(os.path.abspath(path.parent))
    root = base.resolve()
    for name in gltf_buffer_names(path):
        lexical = Path(os.path.normpath(base / name))
        if not lexical.is_relative_to(base):
            raise MeshFileError(
                f"reads its buffer from {name!r}, outside the file's folder; glTF buffers are read only from "
                "the .gltf's own folder. Copy the buffer next to the .gltf and set its uri to the file name")
        target = lexical.resolve()
        if not target.is_relative_to(root):
            inside = [p for p in (lexical, *lexical.parents) if p.is_relative_to(base) and p != base]
            link = next((p for p in inside if p.is_symlink()), lexical)
            raise MeshFileError(
                f"reads its buffer {name!r} through the symbolic link {link.name!r}, which points to {str(target)!r} "
                "outside the scene's folder; glTF buffers are read only from inside the .gltf's own folder, so "
                "links out of it are refused. Replace the link with a copy of the file "
                f"(`cp --remove-destination \"$(readlink -f {name})\" {name}`)")
        if not target.is_file():
            raise MeshFileError(
                f"reads its buffer {name!r}, got no such file next to it. Put the buffer beside the .gltf, or "
                "export the scene as one .glb")


def _stable_path(node: str, parents: dict, base: str, geometry: str) -> tuple[str, ...]:
    chain = [node]
    while chain[-1] in parents and parents[chain[-1]] != base:
        chain.append(parents[chain[-1]])
    path = list(reversed(chain))
    # A primitive frame trimesh named <parent>_<random hex>: name it after its geometry, which is stable.
    if len(path) >= 2 and re.fullmatch(re.escape(path[-2]) + _RANDOM_PRIMITIVE_FRAME, path[-1]):
        path[-1] = geometry
    return tuple(str(p) for p in path)


def load_mesh_nodes(path: Path) -> LoadedMesh:
    """Load every triangle mesh of a file, transforms applied, in stable order (node path, geometry order).

    Faces that use a NaN or inf vertex are dropped and counted in the result. Vertices are merged (as
    trimesh's default processing does) so that watertightness can be judged.

    Raises:
        MeshFileError: the file cannot be read, needs a missing optional package, has no faces (a
            point cloud, an empty file), or has only faces with non-finite vertices.
    """
    if path.suffix.lower() == ".gltf":
        _check_gltf_buffers(path)
    try:
        # process=False: trimesh's processing would drop non-finite faces silently; we count them first.
        scene = trimesh.load(path, force="scene", process=False)
    except ImportError as exc:
        raise MeshFileError(
            f"needs an optional package to read {path.suffix.lower()} files, got {type(exc).__name__}: {exc}. "
            "Reinstall lora3d with its dependencies (`pip install -e .`) or re-export the file as OBJ, GLB, "
            "PLY or STL") from None
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise MeshFileError(
            f"could not be read as a mesh, got {type(exc).__name__}: {exc}. Re-export it as OBJ, GLB, PLY or STL"
        ) from None
    graph = scene.graph
    parents = graph.transforms.parents
    order = {name: index for index, name in enumerate(scene.geometry)}
    nodes: list[MeshNode] = []
    total_faces = dropped = bad_vertices = cloud_points = 0
    for node in graph.nodes_geometry:
        transform, geometry_name = graph[node]
        geometry = scene.geometry.get(geometry_name)
        if isinstance(geometry, trimesh.PointCloud):
            cloud_points += len(geometry.vertices)
        if not isinstance(geometry, trimesh.Trimesh) or not len(geometry.faces):
            continue
        vertices = np.asarray(geometry.vertices, dtype=np.float64)
        faces = np.asarray(geometry.faces, dtype=np.int64)
        finite = np.isfinite(vertices).all(axis=1)
        keep = finite[faces].all(axis=1)
        total_faces += len(faces)
        dropped += int((~keep).sum())
        bad_vertices += int((~finite).sum())
        if not keep.any():
            continue
        vertices = trimesh.transform_points(np.where(finite[:, None], vertices, 0.0), transform)
        mesh = trimesh.Trimesh(vertices=vertices, faces=faces[keep], process=True)
        mesh.remove_unreferenced_vertices()
        path_key = _stable_path(node, parents, graph.base_frame, str(geometry_name))
        nodes.append(MeshNode(path_key, str(geometry_name), order.get(geometry_name, len(order)), mesh))
    if not nodes:
        if total_faces:
            raise MeshFileError(_nonfinite_message(bad_vertices, total_faces))
        if cloud_points:
            raise MeshFileError(
                f"has no faces, got a point cloud of {cloud_points} points. Reconstruct a surface from it "
                "(e.g. Poisson reconstruction) and export that as a triangle mesh")
        raise MeshFileError(
            "contains no triangles, got 0 faces. Check the file is a non-empty triangle mesh (point clouds and "
            "lines are not supported)")
    nodes.sort(key=lambda n: n.key)
    return LoadedMesh(nodes, total_faces, dropped, bad_vertices)


def load_npy_surface(path: Path, allow_pickle_npy: bool) -> Surface:
    """Read a TripoSG surface .npy: a (P, 6) array, or (only with allow_pickle_npy) a pickled dict.

    Points whose normal has zero length are dropped and counted; the other normals are made unit length.

    Raises:
        MeshFileError: a pickled file without the opt-in, an unreadable file, a wrong layout, or
            non-finite or only zero-length normals.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError:
        if not allow_pickle_npy:
            raise MeshFileError("is a pickled .npy (TripoSG's surface dict), got a file that needs pickle to load. Pass `--allow_pickle_npy` only if you trust the file, since unpickling can run code") from None
        try:
            data = np.load(path, allow_pickle=True).item()  # explicit opt-in: this unpickles
        except Exception as exc:
            raise MeshFileError(f"could not be unpickled, got {type(exc).__name__}: {exc}. Re-save it as a dict with `surface_points` and `surface_normals`") from None
    except Exception as exc:
        raise MeshFileError(f"could not be read as .npy, got {type(exc).__name__}: {exc}. Re-save it with numpy.save") from None
    if isinstance(data, dict):
        if "surface_points" not in data or "surface_normals" not in data:
            raise MeshFileError(f"needs keys `surface_points` and `surface_normals`, got {sorted(data)!r}. Save the TripoSG dict layout")
        points, normals = np.asarray(data["surface_points"]), np.asarray(data["surface_normals"])
    elif isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 6:
        points, normals = data[:, :3], data[:, 3:]
    else:
        raise MeshFileError(f"must hold a (N, 6) array or a surface dict, got {getattr(data, 'shape', type(data).__name__)!r}. Save xyz+normals as (N, 6)")
    if points.ndim != 2 or points.shape[1] != 3 or points.shape != normals.shape or len(points) == 0:
        raise MeshFileError(f"surface points and normals must both be (N, 3) with N > 0, got {points.shape} and {normals.shape}. Re-sample the surface")
    if not (np.isfinite(points).all() and np.isfinite(normals).all()):
        raise MeshFileError("surface points or normals contain NaN or inf, got non-finite values. Re-sample the surface")
    points, normals = points.astype(np.float64), normals.astype(np.float64)
    lengths = np.linalg.norm(normals, axis=1)
    keep = lengths > 0
    if not keep.any():
        raise MeshFileError(f"has only zero-length normals, got {len(points)} of {len(points)}. Re-sample the surface with its face normals")
    return Surface(points[keep], normals[keep] / lengths[keep, None], int((~keep).sum()))


def skip_reason(entry: Path) -> str:
    """Say why `entry` (in a scene folder or the input folder) is not read, and what is accepted."""
    suffix = entry.suffix.lower()
    if entry.name.startswith("."):
        return "skipped: hidden (its name starts with '.'). Rename it without the dot if it should be read"
    if entry.is_dir():
        return ("skipped: a folder inside a scene folder is not read. Move its meshes into the scene folder, "
                "or make it a scene folder of its own")
    if suffix in _APPEARANCE_SUFFIXES:
        return ("skipped: materials and textures are not used (the scene image is image.png or a flat-shaded "
                f"render). Accepted: {ACCEPTED_FORMATS}")
    got = repr(suffix) if suffix else "a file without extension"
    return f"skipped: not a format data preparation reads, got {got}. Accepted: {ACCEPTED_FORMATS}"


def _first_named(entries: list[Path], names: tuple[str, ...]) -> Path | None:
    by_name = {}
    for entry in entries:
        by_name.setdefault(entry.name.lower(), entry)
    return next((by_name[n] for n in names if n in by_name), None)


def list_scene_files(folder: Path) -> SceneFiles:
    """Sort a scene folder's entries into meshes/surfaces, image, id map and skipped files (with reasons)."""
    entries = sorted(folder.iterdir())
    files = [e for e in entries if e.is_file() and not e.name.startswith(".")]
    result = SceneFiles()
    result.image = _first_named(files, IMAGE_NAMES)
    result.id_map = _first_named(files, ID_MAP_NAMES)
    result.inputs = [f for f in files if f.suffix.lower() in (*MESH_SUFFIXES, SURFACE_SUFFIX)]
    buffers = {name for f in result.inputs if f.suffix.lower() == ".gltf" for name in gltf_buffer_names(f)}
    used = {*result.inputs, result.image, result.id_map}
    for entry in entries:
        if entry in used or (entry.is_file() and entry.name in buffers):
            continue
        lower = entry.name.lower()
        if lower in IMAGE_NAMES and result.image is not None:
            reason = f"skipped: a second scene image; {result.image.name} is used. Keep one image per scene"
        elif lower in ID_MAP_NAMES and result.id_map is not None:
            reason = f"skipped: a second id map; {result.id_map.name} is used. Keep one id map per scene"
        else:
            reason = skip_reason(entry)
        result.skipped.append((entry.name, reason))
    return result


def list_input_folder(root: Path, output_dir: Path | None = None) -> SceneFiles:
    """Sort the input folder's entries into scenes (folders, mesh files) and skipped entries (with reasons).

    Buffers of a loose .gltf are read with it and appear in neither list; the output folder, when it
    lies inside the input folder, is skipped.
    """
    entries = sorted(root.iterdir())
    buffers = {name for e in entries if e.is_file() and e.suffix.lower() == ".gltf" for name in gltf_buffer_names(e)}
    output = output_dir.resolve() if output_dir is not None else None
    result = SceneFiles()
    for entry in entries:
        if output is not None and entry.resolve() == output:
            result.skipped.append((entry.name, "skipped: this is the output folder"))
        elif entry.is_file() and entry.name in buffers:
            continue
        elif entry.name.startswith("."):
            result.skipped.append((entry.name, skip_reason(entry)))
        elif entry.is_dir() or (entry.is_file() and entry.suffix.lower() in MESH_SUFFIXES):
            result.inputs.append(entry)
        elif entry.suffix.lower() == SURFACE_SUFFIX:
            result.skipped.append((entry.name, "skipped: .npy surfaces are read only inside a scene folder. Put it in a scene folder with that scene's image.png and seg.png"))
        else:
            result.skipped.append((entry.name, skip_reason(entry)))
    return result
