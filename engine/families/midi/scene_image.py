"""Provides a prepared scene's image and instance-id map: the user's files checked and resized, or a render.

A scene folder with ``image.png`` + ``seg.png`` keeps them (the image resized with LANCZOS, the ids with
NEAREST so no id is invented at edges); one with neither is rendered from a MIDI-style random camera.
Either way each instance's pixel count is measured, and instances with none are warned about, because
MIDI's image conditioning cannot see them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, UnidentifiedImageError

from engine.families.midi.prepare_report import SceneProblems
from engine.families.midi.render import render_scene, sample_camera
from engine.input_limits import ImageTooLargeError, open_lazily

__all__ = ["list_names", "scene_image", "visible_pixels"]

_MAX_NAMES_IN_MESSAGE = 10


def list_names(names: list[str]) -> str:
    """Names for a message, the first ten and a count of the rest."""
    shown = ", ".join(repr(n) for n in names[:_MAX_NAMES_IN_MESSAGE])
    more = len(names) - _MAX_NAMES_IN_MESSAGE
    return f"[{shown}{f', and {more} more' if more > 0 else ''}]"


def _read_rgb(path: Path, problems: SceneProblems) -> Image.Image | None:
    try:
        with open_lazily(path) as img:  # bounded: a tiny PNG can declare 10^10 pixels
            img.load()
            if img.mode in ("RGBA", "LA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")  # MIDI renders on white
            return img.convert("RGB")
    except ImageTooLargeError as exc:
        problems.error(path.name, str(exc))
        return None
    except (UnidentifiedImageError, OSError) as exc:
        problems.error(path.name, f"could not be read as an image, got {type(exc).__name__}: {exc}. Save it as PNG or JPEG")
        return None


def _read_id_map(path: Path, problems: SceneProblems) -> np.ndarray | None:
    try:
        with open_lazily(path) as img:
            img.load()
            ids = np.array(img)
    except ImageTooLargeError as exc:
        problems.error(path.name, str(exc))
        return None
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


def scene_image(
    image_path: Path | None,
    id_path: Path | None,
    meshes: list[trimesh.Trimesh | None],
    size: int,
    camera_rng: np.random.Generator,
    problems: SceneProblems,
) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """Return the scene's image and id map, read from the given files or rendered; None after an error.

    Args:
        image_path, id_path: the scene's image and id map, or None (both None: render them).
        meshes: instances in id order, in the normalised scene frame; None for a point-only instance.
        size: side of the square output, pixels.
        camera_rng: draws the render camera (MIDI's training distribution).
        problems: where errors and warnings are recorded.

    Returns:
        rgb (S, S, 3) uint8, ids (S, S) uint8 (uint16 above 255 instances), and the manifest's image entry.
    """
    num_instances = len(meshes)
    if image_path is None and id_path is None:
        if any(m is None for m in meshes):
            problems.error(".", "has point-only (.npy) instances and no image, got nothing to render. Add image.png and seg.png")
            return None
        camera = sample_camera(camera_rng)
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
        problems.error(id_path.name, f"has ids that match no instance, got {bad} with {num_instances} instances (valid: 0 = background, 1..{num_instances}). Number instances 1..N in the id order of manifest.json (sorted file names, or node paths for a one-file scene)")
        return None
    if width < size:
        problems.warn(image_path.name, f"is {width}px, smaller than image_size {size}; it is upsampled")
    rgb = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    id_dtype = np.uint8 if num_instances <= 255 else np.uint16
    id_image = Image.fromarray(ids.astype(np.int32), mode="I")
    resized_ids = np.asarray(id_image.resize((size, size), Image.Resampling.NEAREST)).astype(id_dtype)
    entry = {"source": "provided", "source_files": [image_path.name, id_path.name], "original_size": [width, height]}
    return rgb, resized_ids, entry


def visible_pixels(ids: np.ndarray, names: list[str], image_entry: dict, id_path: Path | None, problems: SceneProblems) -> np.ndarray:
    """Count each instance's pixels in the final id map, shape (num_instances,); warn about those with none."""
    pixels = np.bincount(ids.reshape(-1).astype(np.int64), minlength=len(names) + 1)[1 : len(names) + 1]
    hidden = [names[i] for i in np.flatnonzero(pixels == 0)]
    if hidden and image_entry["source"] == "provided":
        problems.warn(id_path.name if id_path else ".", f"shows no pixels for instances {list_names(hidden)} (fully occluded, out of view, or lost in resizing to image_size); they are prepared and marked `visible: false` in manifest.json")
    elif hidden:
        problems.warn(".", f"{len(hidden)} of {len(names)} instances show no pixels in the rendered image (hidden behind or inside others, or smaller than a pixel at image_size {ids.shape[0]}): {list_names(hidden)}; they are prepared and marked `visible: false` in manifest.json")
    return pixels
