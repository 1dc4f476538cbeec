"""Provides the wheel packing for the GPU machine: LZMA recompression, and the size of what one call carries.

A device call carries the working tree and the named folders, at most 64 MiB in all. spconv's wheels are
about 97 MB as published (deflate); recompressing their members with LZMA (a method every zip reader in
Python's standard library reads, so pip installs them unchanged) brings them to about 45 MB. File names,
contents and the wheel's RECORD stay the same.

    python3 scripts/gpucheck/pack_wheels.py SRC_DIR DEST_DIR   # recompress every SRC_DIR/*.whl into DEST_DIR
    python3 scripts/gpucheck/pack_wheels.py --size DIR         # DIR + the tree that travels, against 64 MiB
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

CALL_LIMIT = 64 * 2**20
"""What one device call carries at most: the working tree plus the carried folders."""


def repack(src: Path, dest: Path) -> Path:
    """Rewrites the wheel `src` as `dest/src.name` with every member LZMA-compressed; checks the result."""
    out = dest / src.name
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            member.external_attr = info.external_attr
            member.compress_type = zipfile.ZIP_LZMA
            zout.writestr(member, zin.read(info))
    with zipfile.ZipFile(tmp) as check, zipfile.ZipFile(src) as zin:
        bad = check.testzip()
        if bad is not None or [i.CRC for i in check.infolist()] != [i.CRC for i in zin.infolist()]:
            tmp.unlink()
            raise SystemExit(f"pack_wheels: {src.name}: the recompressed wheel does not match ({bad}); nothing written")
    tmp.replace(out)
    return out


def tree_bytes(repo: Path) -> int:
    """Bytes of the files a device call sends: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        path = repo / name.decode()
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="SRC_DIR DEST_DIR, or with --size one folder")
    parser.add_argument("--size", action="store_true", help="only report the folder's size with the tree")
    args = parser.parse_args(argv)
    if args.size:
        folder = args.paths[0]
        wheels = sum(p.stat().st_size for p in folder.glob("*.whl"))
        tree = tree_bytes(Path(__file__).resolve().parents[2])
        total = wheels + tree
        verdict = "fits" if total <= CALL_LIMIT else "does NOT fit"
        print(f"pack_wheels: {folder}: {wheels / 2**20:.1f} MiB of wheels + {tree / 2**20:.1f} MiB of tree = "
              f"{total / 2**20:.1f} MiB: {verdict} one device call ({CALL_LIMIT / 2**20:.0f} MiB)")
        return 0 if total <= CALL_LIMIT else 1
    if len(args.paths) != 2:
        parser.error("give SRC_DIR and DEST_DIR")
    src, dest = args.paths
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(src.glob("*.whl")):
        out = repack(wheel, dest)
        print(f"pack_wheels: {wheel.name}: {wheel.stat().st_size / 2**20:.1f} -> {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
