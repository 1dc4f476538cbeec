"""Provides the hardware probe: GPUs through NVML in torch's device order, host RAM, optional backends.

NVML numbers GPUs by PCI bus; torch numbers the devices CUDA_VISIBLE_DEVICES leaves, in that order.
The probe maps one onto the other so `index` is always what `cuda:index` means to the trainer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import psutil


@dataclass
class GpuInfo:
    index: int
    """torch device index (after CUDA_VISIBLE_DEVICES)."""
    name: str
    total_bytes: int
    free_bytes: int
    driver: str | None = None
    compute_capability: str | None = None
    uuid: str | None = None


@dataclass
class HardwareInfo:
    gpus: list[GpuInfo]
    host_ram_bytes: int
    accelerators: dict[str, bool]
    driver: str | None = None
    note: str = ""
    """Why there is no GPU, when there is none."""
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def cpu_mode(self) -> bool:
        return not self.gpus

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu_mode"] = self.cpu_mode
        return out


class NvmlLike(Protocol):
    """The part of pynvml the probe uses; tests pass a fake."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _accelerators() -> dict[str, bool]:
    return {name: importlib.util.find_spec(name) is not None for name in ("spconv", "flash_attn")}


def _visible_order(count: int, uuids: list[str | None]) -> list[int]:
    """NVML indices in torch's order, honouring CUDA_VISIBLE_DEVICES (indices or UUID prefixes)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    order: list[int] = []
    for token in (t.strip() for t in visible.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            idx = int(token)
            if idx < 0 or idx >= count:
                break  # CUDA stops at the first invalid entry
            order.append(idx)
        else:
            match = [i for i, u in enumerate(uuids) if u and u.startswith(token)]
            if len(match) != 1:
                break
            order.append(match[0])
    return order


def _load_nvml() -> NvmlLike | None:
    try:
        import pynvml  # lazy: optional (nvidia-ml-py); a machine without it is CPU mode
    except ImportError:
        return None
    return pynvml


def probe_hardware(nvml: NvmlLike | None = None) -> HardwareInfo:
    """Every visible GPU, host RAM and optional backends; a CPU-mode result (never an exception) without a driver."""
    host_ram = psutil.virtual_memory().total
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return HardwareInfo([], host_ram, _accelerators(), note="no GPU: nvidia-ml-py is not installed; CPU mode")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA driver here
        return HardwareInfo([], host_ram, _accelerators(), note=f"no GPU: CPU mode (smoke tests and the demo); NVML: {exc}")
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids: list[str | None] = []
        for handle in handles:
            try:
                uuids.append(_text(nvml.nvmlDeviceGetUUID(handle)))
            except Exception:
                uuids.append(None)
        gpus = []
        for torch_index, nvml_index in enumerate(_visible_order(count, uuids)):
            handle = handles[nvml_index]
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            capability = None
            getter = getattr(nvml, "nvmlDeviceGetCudaComputeCapability", None)
            if getter is not None:
                try:
                    major, minor = getter(handle)
                    capability = f"{major}.{minor}"
                except Exception:
                    capability = None
            gpus.append(
                GpuInfo(
                    index=torch_index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    driver=driver,
                    compute_capability=capability,
                    uuid=uuids[nvml_index],
                )
            )
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    note = "" if gpus else "no GPU: CPU mode (smoke tests and the demo); CUDA_VISIBLE_DEVICES hides every GPU"
    return HardwareInfo(gpus, host_ram, _accelerators(), driver=driver, note=note)
