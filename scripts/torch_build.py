"""Provides quickstart.sh's check of the torch build pip would install, against the NVIDIA driver's CUDA.

quickstart.sh asks pip what it would install (`pip install --dry-run --report FILE torch...`, through
pip's configured index, or `LORA3D_TORCH_INDEX`) and runs this with the driver's CUDA version (the
"CUDA Version" nvidia-smi prints: the newest CUDA the driver runs). Standard library only: it runs
before anything else is installed.

    python scripts/torch_build.py REPORT.json --driver-cuda 12.4

Exit 0: fine (a note is printed when the build is for a newer CUDA minor, which CUDA's minor-version
compatibility usually runs, or when it is a CPU build). Exit 3: the build needs a newer CUDA major
than the driver runs, so torch would not see the GPU. Exit 2: the report has no torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

_RUNTIME = re.compile(r"^nvidia-cuda-runtime(?:-cu(\d+))?$")


def _version_tuple(text: str) -> tuple[int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_build(report: dict[str, Any]) -> tuple[str, tuple[int, int] | None]:
    """(torch version, CUDA (major, minor) it is built for, or None for a CPU build) from a pip report.

    The local version label says it when the index uses one (`2.5.1+cu121`, `2.13.0+cpu`); otherwise the
    CUDA runtime package pip would install with it (`nvidia-cuda-runtime-cu12 12.8.90`,
    `nvidia-cuda-runtime 13.0.x`) does; no runtime package means a CPU build.
    """
    packages = {str(item["metadata"]["name"]).lower().replace("_", "-"): str(item["metadata"]["version"])
                for item in report.get("install", []) if "metadata" in item}
    if "torch" not in packages:
        raise KeyError("torch")
    version = packages["torch"]
    local = version.partition("+")[2]
    if local == "cpu":
        return version, None
    match = re.match(r"^cu(\d+)(\d)$", local)
    if match:
        return version, (int(match.group(1)), int(match.group(2)))
    for name, package_version in packages.items():
        if _RUNTIME.match(name):
            return version, _version_tuple(package_version)
    return version, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pip's --report JSON of a dry-run torch install")
    parser.add_argument("--driver-cuda", default="", help="the CUDA version nvidia-smi reports for the driver")
    args = parser.parse_args(argv)
    try:
        version, cuda = torch_build(json.loads(args.report.read_text()))
    except (OSError, ValueError, KeyError) as exc:
        print(f"could not read which torch pip would install from {args.report}: {exc!r}")
        return 2
    driver = _version_tuple(args.driver_cuda) if args.driver_cuda else None
    driver_text = f"{driver[0]}.{driver[1]}" if driver else "unknown"
    if cuda is None:
        print(f"pip would install torch {version}, a CPU build, although an NVIDIA driver (CUDA {driver_text}) is "
              "present: training would run on the CPU. For the GPU, set LORA3D_TORCH_INDEX to a PyTorch wheel "
              "index for your CUDA version (README) and rerun.")
        return 0
    build = f"{cuda[0]}.{cuda[1]}"
    if driver is None:
        print(f"pip would install torch {version} built for CUDA {build}; the driver's CUDA version is unknown.")
        return 0
    if cuda[0] > driver[0]:
        print(f"pip would install torch {version} built for CUDA {build}, but the NVIDIA driver runs CUDA up to "
              f"{driver_text}: torch would not see the GPU. Update the driver, or set LORA3D_TORCH_INDEX to a "
              f"PyTorch wheel index for CUDA {driver[0]}.x (README) and rerun.")
        return 3
    note = ""
    if cuda > driver:
        note = (f" (newer than the driver's {driver_text}: CUDA's minor-version compatibility usually runs it; if "
                "torch reports no GPU, update the driver)")
    print(f"pip would install torch {version} built for CUDA {build}; the driver runs CUDA {driver_text}{note}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
