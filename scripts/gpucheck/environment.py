"""Provides the environment section: torch and CUDA, the GPU through NVML (the wizard's probe), packages.

The GPU is read twice, by torch and by `engine.hardware.probe_hardware` (NVML in torch's device order,
what `lora3d probe` and the wizard show), and the two must agree on count, names and memory. Every
package the later sections import must import here, so a missing wheel is named once, up front.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

import torch

from engine.hardware import probe_hardware
from gpucheck.record import Context, Section

REQUIRED = ("torch", "numpy", "safetensors", "peft", "accelerate", "transformers", "diffusers", "pydantic",
            "yaml", "rich", "trimesh", "plyfile", "scipy", "skimage", "PIL", "psutil", "pynvml")
"""Modules the training, fidelity and memory sections import (the wizard's textual/questionary are not needed)."""
DISTRIBUTIONS = ("torch", "numpy", "safetensors", "peft", "accelerate", "transformers", "diffusers", "pydantic",
                 "trimesh", "plyfile", "nvidia-ml-py", "spconv-cu126", "spconv-cu120", "cumm-cu126", "flash-attn")
OPTIONAL = ("spconv", "flash_attn")
_MEMORY_AGREEMENT = 0.02
"""NVML and torch report the same total memory (torch's is the device property); 2% allows for rounding."""


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(ctx: Context, section: Section) -> None:
    """Versions, the GPU as torch and NVML see it, required and optional packages."""
    missing = []
    for module in REQUIRED:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install is as bad as a missing one
            missing.append(f"{module} ({type(exc).__name__}: {exc})"[:160])
    section.judge("required packages import", not missing,
                  "all import" if not missing else "missing: " + "; ".join(missing)
                  + ". Carry the wheels (docs/gpu.md, scripts/gpucheck/wheels.txt).")
    versions = {name: _version(name) for name in DISTRIBUTIONS}
    section.facts["python"] = platform.python_version()
    section.facts["packages"] = {k: v for k, v in versions.items() if v}
    section.add("package versions", "info", ", ".join(f"{k} {v}" for k, v in versions.items() if v), **versions)

    section.facts["torch"] = torch.__version__
    section.facts["torch_cuda"] = torch.version.cuda
    cuda = torch.cuda.is_available()
    if ctx.device == "cuda":
        section.judge("CUDA available to torch", cuda, f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
    else:
        section.add("CUDA available to torch", "info", f"dry run on the CPU (CUDA available: {cuda})")
    _gpus(ctx, section)
    _optional(section)
    if cuda:
        section.add("TF32 defaults", "info",
                    f"matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}; "
                    "the fidelity section turns both off for its fp32 checks",
                    matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32)
        flags = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                 for name in ("flash", "mem_efficient", "math", "cudnn")
                 if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")}
        section.add("SDPA backends enabled", "info", ", ".join(f"{k} {v}" for k, v in flags.items()), **flags)
    section.facts["executable"] = sys.executable


def _gpus(ctx: Context, section: Section) -> None:
    """The GPUs as torch sees them, and as `probe_hardware` (NVML) maps them to torch's order."""
    hardware = probe_hardware()
    section.facts["host_ram_gib"] = round(hardware.host_ram_bytes / 2**30, 1)
    section.facts["cpu_count"] = hardware.cpu_count
    torch_gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            torch_gpus.append({"name": props.name, "total_bytes": int(props.total_memory),
                               "capability": f"{props.major}.{props.minor}",
                               "multiprocessors": props.multi_processor_count})
    nvml_gpus = [{"name": g.name, "total_bytes": g.total_bytes, "capability": g.compute_capability,
                  "driver": g.driver} for g in hardware.gpus]
    section.facts["gpus"] = torch_gpus
    section.facts["driver"] = hardware.driver
    if torch_gpus:
        first = torch_gpus[0]
        section.facts["device"] = f"{first['name']}, {first['total_bytes'] / 2**30:.1f} GiB, capability " \
                                  f"{first['capability']}, driver {hardware.driver}"
    else:
        section.facts["device"] = f"CPU ({hardware.cpu_count} cores), no GPU"
    if ctx.device != "cuda":
        section.judge("NVML probe (probe_hardware) in CPU mode", hardware.cpu_mode or not torch_gpus,
                      hardware.note or f"{len(hardware.gpus)} GPU(s) via NVML", gpus=nvml_gpus)
        return
    problems = []
    if len(nvml_gpus) != len(torch_gpus):
        problems.append(f"NVML lists {len(nvml_gpus)} GPU(s), torch {len(torch_gpus)} ({hardware.note})")
    for i, (n, t) in enumerate(zip(nvml_gpus, torch_gpus)):
        if n["name"] != t["name"]:
            problems.append(f"GPU {i}: NVML name {n['name']!r}, torch {t['name']!r}")
        if abs(n["total_bytes"] - t["total_bytes"]) > _MEMORY_AGREEMENT * t["total_bytes"]:
            problems.append(f"GPU {i}: NVML total {n['total_bytes']}, torch {t['total_bytes']}")
        if n["capability"] and n["capability"] != t["capability"]:
            problems.append(f"GPU {i}: NVML capability {n['capability']}, torch {t['capability']}")
    section.judge("NVML probe (probe_hardware) agrees with torch", not problems,
                  "; ".join(problems) or section.facts["device"], nvml=nvml_gpus, torch=torch_gpus)


def _optional(section: Section) -> None:
    """Which optional accelerators import (the probe only looks for them; this imports them)."""
    for module in OPTIONAL:
        try:
            mod = importlib.import_module("spconv.pytorch" if module == "spconv" else module)
        except Exception as exc:  # not installed, or installed for another CUDA/torch: both mean "not used"
            section.add(f"optional: {module}", "info", f"not used: {type(exc).__name__}: {exc}"[:200])
            continue
        version = getattr(mod, "__version__", None) or _version(module.replace("_", "-"))
        section.add(f"optional: {module}", "info", f"imports ({version or 'version unknown'})", version=version)
