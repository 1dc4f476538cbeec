"""Provides bounded reading of users' data files: what a header declares is checked against the file before allocating.

A `.npy` header, a PLY header or a PNG header states how large the data is, and the readers (numpy,
plyfile, Pillow) allocate that much before they read a byte of it. A damaged or hostile header that
declares 1e11 elements ends in a MemoryError (or the kernel's OOM killer) instead of a message. Every
reader of a user's file in lora3d goes through these checks first:

* the path is a regular file (a missing path, a folder, a pipe or a device each get their own message);
* `.npy`: the declared array fits in the file (and holds no Python objects);
* PLY: every element's declared rows fit in the file, and the file holds no more rows than declared (a
  header count that is too small would import part of the data without a word);
* images: at most `MAX_IMAGE_PIXELS` pixels, read from the header before decoding.
"""

from __future__ import annotations

import math
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import DataError, DataNotFoundError

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image read (67 megapixels; the image models work at 512 x 512, a camera photo has 24-50 megapixels)."""
MAX_PLY_HEADER_BYTES = 65536
"""Longest PLY header read (a 3DGS header with 62 properties is about 1.5 KB)."""

_PLY_TYPE_BYTES = {
    "char": 1, "uchar": 1, "int8": 1, "uint8": 1,
    "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
    "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4,
    "double": 8, "float64": 8,
}  # fmt: skip
_PLURALS = {"vertex": "vertices", "face": "faces", "edge": "edges"}


def regular_file_size(path: Path, what: str, fix: str) -> int:
    """The size of `path`, which must be a regular file.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. "`.npy` file").
        fix: the sentence that says how to fix a missing file.

    Raises:
        DataNotFoundError: nothing exists at `path`.
        DataError: `path` is a folder, a pipe, a socket or a device (reading one would block or never end).
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: {what} is missing, got no such file. {fix}") from None
    except OSError as exc:
        raise DataError(f"{path}: {what} cannot be read, got {exc.strerror or exc}. Check the path and its permissions.") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{path}: {what} is a folder, not a file. Point to the file itself.")
    if not stat.S_ISREG(info.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else (
            "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")
        raise DataError(
            f"{path}: {what} must be a regular file, got {kind}. Save the data to a file and point to that."
        )
    return info.st_size


@dataclass(frozen=True)
class NpyHeader:
    """What a `.npy` header declares."""

    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _read_npy_header(handle: IO[bytes], where: str, allow_objects: bool = False) -> NpyHeader:
    """The header at the start of `handle` (a file or a zip member)."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise DataError(
            f"{where}: cannot read the .npy file (truncated, corrupt or not a .npy), got {str(err)!r}. "
            "Re-export it with numpy.save from a plain numeric array."
        ) from None
    if dtype.hasobject and not allow_objects:
        raise DataError(
            f"{where}: cannot read the .npy file: it holds pickled objects (dtype {str(dtype)!r}), which lora3d "
            "never unpickles. Re-export it with numpy.save from a plain numeric array."
        )
    return NpyHeader(tuple(int(d) for d in shape), dtype, handle.tell())


def read_npy_header(path: Path, allow_objects: bool = False) -> NpyHeader:
    """The header of a `.npy` file whose declared array fits in the file.

    Args:
        path: the file.
        allow_objects: accept a pickled-object array (its size is then not checked: the caller has opted in
            to unpickling a trusted file).

    Raises:
        DataNotFoundError: the file is missing.
        DataError: not a regular file, an unreadable header, pickled objects, or a declared array larger
            than the file (truncated, or a header that lies).
    """
    size = regular_file_size(path, ".npy file", "Write it or remove the scene folder.")
    with path.open("rb") as handle:
        header = _read_npy_header(handle, str(path), allow_objects)
    have = size - header.data_offset
    if header.nbytes > have and not header.dtype.hasobject:
        raise DataError(
            f"{path}: cannot read the .npy file: it is truncated, the header declares a {header.shape} "
            f"{header.dtype} array of {header.nbytes:,} bytes, got {max(have, 0):,} bytes of data. Re-export it "
            "with numpy.save."
        )
    return header


def load_npy(path: Path) -> np.ndarray:
    """A `.npy` array, its header checked first; never unpickles.

    Raises:
        DataNotFoundError, DataError: as `read_npy_header`, or a read failure.
    """
    read_npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: cannot read the .npy file (truncated, corrupt or pickled objects), got {str(err)!r}. "
            "Re-export it with numpy.save from a plain numeric array."
        ) from err


def check_npz_members(path: Path, max_member_bytes: int) -> None:
    """Each array in a `.npz` declares at most `max_member_bytes` and what its zip entry really holds.

    A compressed member is inflated into an array of the declared size, so the declaration is checked
    against the entry's recorded size and the bound before numpy allocates it.

    Raises:
        DataError: an unreadable archive, or a member over the bound or larger than its entry.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    # Object arrays: numpy.load refuses them without allow_pickle, with its own message.
                    header = _read_npy_header(member, f"{path}:{info.filename}", allow_objects=True)
                if header.dtype.hasobject:
                    continue
                if header.nbytes > max_member_bytes or header.nbytes > info.file_size:
                    raise DataError(
                        f"{path}: array `{info.filename[:-4]}` declares {header.shape} {header.dtype} "
                        f"({header.nbytes:,} bytes), more than its {info.file_size:,}-byte entry or the "
                        f"{max_member_bytes:,}-byte limit. Re-export the file."
                    )
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: could not be read as .npz, got {type(exc).__name__}: {exc}. Re-export the file.") from None


@dataclass(frozen=True)
class PlyElement:
    """One element of a PLY header: its row count and the bytes each row needs."""

    name: str
    count: int
    min_row_bytes: int
    """Smallest row in the file's format (binary: the fixed properties plus each list's count; ascii: two
    characters per property)."""
    fixed: bool
    """True when every row has exactly `min_row_bytes` (binary, no list properties)."""


@dataclass(frozen=True)
class PlyHeader:
    """What a PLY header declares."""

    format: str
    elements: tuple[PlyElement, ...]
    header_bytes: int


def read_ply_header(path: Path) -> PlyHeader:
    """The header of a PLY file, checked against the file's size before any reader allocates its rows.

    Raises:
        DataNotFoundError: the file is missing.
        DataError: not a regular file, not a PLY, a malformed count, rows that cannot fit in the file, or
            (where rows can be counted cheaply: binary without lists, and ascii) more rows than declared.
    """
    size = regular_file_size(path, "PLY file", "Check the .ply path.")
    with path.open("rb") as handle:
        head = handle.read(MAX_PLY_HEADER_BYTES)
    marker = head.find(b"end_header")
    if not head.startswith(b"ply") or marker < 0:
        raise DataError(f"{path}: not a PLY file, got header {head[:16]!r}. Export the data as .ply.")
    end = head.find(b"\n", marker)
    header_bytes = (end + 1) if end >= 0 else len(head)
    fmt = ""
    elements: list[list] = []  # [name, count, min_row_bytes, fixed, properties]
    for number, line in enumerate(head[:marker].decode("ascii", "replace").splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if words[0] == "format" and len(words) > 1:
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise DataError(
                    f"{path}: PLY header line {number} must read `element NAME COUNT`, got {line[:60]!r}. "
                    "The file is corrupt; export it again."
                )
            elements.append([words[1], int(words[2]), 0, True, 0])
        elif words[0] == "property" and elements:
            element = elements[-1]
            element[4] += 1
            if len(words) >= 2 and words[1] == "list":
                element[2] += _PLY_TYPE_BYTES.get(words[2], 1) if len(words) > 2 else 1
                element[3] = False
            else:
                element[2] += _PLY_TYPE_BYTES.get(words[1], 1) if len(words) > 1 else 1
    ascii_format = fmt == "ascii"
    parsed = tuple(
        PlyElement(name, count, 2 * max(props, 1) if ascii_format else row, fixed and not ascii_format)
        for name, count, row, fixed, props in elements
    )
    have = size - header_bytes
    need = sum(e.count * e.min_row_bytes for e in parsed)
    if need > have:
        counts = ", ".join(f"{e.count} {_PLURALS.get(e.name, e.name + ' rows')}" for e in parsed)
        raise DataError(
            f"{path}: cannot parse the PLY file: its header declares {counts}, needing at least {need:,} bytes, got a {size:,}-byte file "
            f"({max(have, 0):,} bytes of data). The file is truncated or its header is wrong; export or copy it again."
        )
    declared_rows = sum(e.count for e in parsed)
    if parsed and all(e.fixed for e in parsed) and have > need:
        _too_few(path, f"{have - need:,} bytes beyond the {declared_rows:,} declared rows")
    elif ascii_format:
        rows = _count_lines(path, header_bytes)
        if rows > declared_rows:
            _too_few(path, f"{rows:,} data lines for {declared_rows:,} declared rows")
    return PlyHeader(fmt, parsed, header_bytes)


def _too_few(path: Path, what: str) -> None:
    raise DataError(
        f"{path}: the file holds more data than its header declares, got {what}. A reader would import part of it "
        "without a word; fix the `element` counts in the header, or export the file again."
    )


def _count_lines(path: Path, offset: int) -> int:
    """Lines with something on them after `offset` (the rows of an ascii PLY)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        return sum(1 for line in handle if line.strip())


def image_size_problem(image: Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an opened (not yet decoded) image is too large to read, or None."""
    width, height = image.size
    if width * height <= max_pixels:
        return None
    return (f"is {width}x{height} ({width * height:,} pixels), more than the {max_pixels:,} pixels lora3d reads. "
            "Resize it (the image models work at 512x512)")


class ImageTooLargeError(DataError):
    """An image whose header declares more pixels than lora3d reads; the message is the reason alone."""


def open_lazily(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """`Image.open` (which reads the header only), refusing an image of more than `max_pixels` pixels.

    Raises:
        ImageTooLargeError: the reason, without the path (callers word where it happened).
        UnidentifiedImageError, OSError: as `Image.open`.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 megapixels and refuses above 179; the lower limit here applies first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found[1]):,} pixels" if found else "a size Pillow refuses"
        raise ImageTooLargeError(f"is {size}, more than the {max_pixels:,} pixels lora3d reads. Resize it (the image "
                                 "models work at 512x512)") from None
    problem = image_size_problem(image, max_pixels)
    if problem:
        image.close()
        raise ImageTooLargeError(problem)
    return image


def open_image(path: Path, what: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An image, decoded only after its header shows at most `max_pixels` pixels.

    Args:
        path: the image file.
        what: what the image is, for messages ("scene image", "seg.png").
        max_pixels: the size limit.

    Raises:
        DataNotFoundError: the file is missing.
        DataError: not a regular file, unreadable, or larger than the limit (a "decompression bomb").
    """
    if not path.exists():
        raise DataNotFoundError(f"{path}: {what} not found, got {str(path)!r}. Pass an existing PNG or JPEG file.")
    regular_file_size(path, what, "Pass an existing PNG or JPEG file.")
    try:
        image = open_lazily(path, max_pixels)
        image.load()
    except ImageTooLargeError as exc:
        raise DataError(f"{path}: {what} {exc}.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: {what} could not be read as an image, got {type(exc).__name__}: {exc}. Save it as PNG."
        ) from None
    return image
