"""Provides 3DGS `.ply` output of predictions: the input `.ply` recoloured, or a new one from a scene folder.

A recoloured file keeps the input's header and every Gaussian property byte for byte except colour:
`f_dc_0..2` become the new colour in SH band 0 (`(rgb - 0.5) / C0`, the inverse of the import's
`0.5 + C0 * f_dc`), the higher bands `f_rest_*` become 0 so the colour does not change with the view,
and `red`/`green`/`blue` (some exporters add them) take the colour as well. Binary files stream through
in blocks (a 1M-Gaussian file is never held twice); ASCII files go through plyfile.

A scene folder has no `.ply`: `write_3dgs_ply` writes the INRIA layout back from its arrays (the inverse
of `ply_import`: log-scale, opacity logit, quaternion (w, x, y, z)), so any splat viewer opens it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile

from engine.atomic import atomic_file
from engine.families.scenesplat.ply_import import SH_C0

COLOR_PREFIXES = ("f_dc_", "f_rest_")
COLOR_NAMES = ("red", "green", "blue")
_BLOCK = 1 << 16
"""Gaussians per block when streaming a binary file."""


def is_color_property(name: str) -> bool:
    """True for the properties a recolouring rewrites."""
    return name.startswith(COLOR_PREFIXES) or name in COLOR_NAMES


def _recolour_rows(rows: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """A copy of structured `rows` with the colour properties set from (n, 3) uint8 `rgb`."""
    out = rows.copy()
    unit = rgb.astype(np.float64) / 255.0
    for name in out.dtype.names:
        if name.startswith("f_dc_"):
            out[name] = (unit[:, int(name[5:])] - 0.5) / SH_C0
        elif name.startswith("f_rest_"):
            out[name] = 0
        elif name in COLOR_NAMES:
            value = rgb[:, COLOR_NAMES.index(name)]
            out[name] = value if np.issubdtype(out.dtype[name], np.integer) else value / 255.0
    return out


def _header_bytes(path: Path) -> bytes:
    with path.open("rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    return head[: head.index(b"\n", end) + 1]


def recolour_ply(src: Path, dest: Path, rgb: np.ndarray) -> Path:
    """Writes `src` (an INRIA 3DGS .ply, already validated) to `dest` with every Gaussian recoloured, atomically.

    Args:
        src: the input .ply.
        dest: the output .ply.
        rgb: (N, 3) uint8, one colour per vertex in file order.
    """
    src, dest = Path(src), Path(dest)
    ply = plyfile.PlyData.read(str(src))
    vertex = ply["vertex"]
    data = vertex.data
    # Binary, vertex first, fixed-size rows: the rows can be read and written block by block.
    streamable = (not ply.text and ply.elements[0].name == "vertex"
                  and not any(isinstance(p, plyfile.PlyListProperty) for p in vertex.properties))
    with atomic_file(dest) as tmp:
        if not streamable:
            elements = [plyfile.PlyElement.describe(_recolour_rows(data, rgb), "vertex",
                                                    comments=list(vertex.comments))]
            elements += [el for el in ply.elements if el.name != "vertex"]
            plyfile.PlyData(elements, text=ply.text, byte_order=ply.byte_order, comments=list(ply.comments),
                            obj_info=list(ply.obj_info)).write(str(tmp))
            return dest
        header = _header_bytes(src)
        dtype = data.dtype
        with src.open("rb") as f_in, tmp.open("wb") as f_out:
            f_out.write(header)
            f_in.seek(len(header))
            for start in range(0, len(data), _BLOCK):
                count = min(_BLOCK, len(data) - start)
                rows = np.frombuffer(f_in.read(count * dtype.itemsize), dtype=dtype, count=count)
                f_out.write(_recolour_rows(rows, rgb[start : start + count]).tobytes())
            while block := f_in.read(1 << 20):  # later elements, if any, verbatim
                f_out.write(block)
    return dest


def write_3dgs_ply(dest: Path, scene: dict[str, np.ndarray], rgb: np.ndarray) -> Path:
    """Writes a scene's Gaussians as an INRIA 3DGS binary .ply coloured `rgb`, atomically.

    Args:
        dest: the output .ply.
        scene: `load_scene` arrays: `coord`, `opacity` in [0, 1], `quat` (w, x, y, z), `scale` (> 0),
            `normal` when present.
        rgb: (N, 3) uint8.
    """
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    dtype = np.dtype([(n, "<f4") for n in names])
    n = len(scene["coord"])
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by lora3d predict\n"
              f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in names) + "end_header\n").encode()
    with atomic_file(Path(dest)) as tmp, tmp.open("wb") as f:
        f.write(header)
        for start in range(0, n, _BLOCK):
            part = slice(start, min(n, start + _BLOCK))
            rows = np.zeros(part.stop - start, dtype=dtype)
            for i, axis in enumerate("xyz"):
                rows[axis] = scene["coord"][part, i]
                if "normal" in scene:
                    rows[f"n{axis}"] = scene["normal"][part, i]
                rows[f"scale_{i}"] = np.log(np.maximum(scene["scale"][part, i].astype(np.float64), 1e-12))
            unit = rgb[part].astype(np.float64) / 255.0
            for i in range(3):
                rows[f"f_dc_{i}"] = (unit[:, i] - 0.5) / SH_C0
            opacity = np.clip(scene["opacity"][part].reshape(-1).astype(np.float64), 1e-6, 1 - 1e-6)
            rows["opacity"] = np.log(opacity / (1 - opacity))
            for i in range(4):
                rows[f"rot_{i}"] = scene["quat"][part, i]
            f.write(rows.tobytes())
    return Path(dest)


__all__ = ["is_color_property", "recolour_ply", "write_3dgs_ply"]
