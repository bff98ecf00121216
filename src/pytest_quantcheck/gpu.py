"""NVIDIA GPU telemetry through NVML (the ``pynvml`` module of the optional ``nvidia-ml-py``).

Every query answers; none raises. Without the module, a driver, or a GPU, the answer is a
:class:`GpuReport` with no devices and a ``note`` that says why, which reports print as
"not available". Tests pass a fake NVML module in place of ``pynvml``.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

INSTALL_HINT = "install pytest-quantcheck[gpu] (nvidia-ml-py)"


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int  # bytes, by every process


@dataclass(frozen=True)
class GpuReport:
    devices: tuple[GpuDevice, ...] = ()
    process_bytes: int | None = None  # device memory held by the process asked about
    note: str = ""  # why there are no devices, when there are none

    @property
    def available(self) -> bool:
        return bool(self.devices)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def used_bytes(self) -> int:
        return sum(d.memory_used for d in self.devices)

    def describe(self) -> str:
        if not self.devices:
            return f"GPU not available ({self.note})"
        return ", ".join(f"{d.name} ({d.memory_used / 2**20:,.0f} of {d.memory_total / 2**20:,.0f} MiB"
                         " used)" for d in self.devices)


def _load_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def query(pid: int | None = None, nvml: ModuleType | None = None) -> GpuReport:
    """Devices, their memory, and (with ``pid``) the device memory that process holds."""
    nv = nvml if nvml is not None else _load_nvml()
    if nv is None:
        return GpuReport(note=f"nvidia-ml-py is not installed; {INSTALL_HINT}")
    error: type[BaseException] = getattr(nv, "NVMLError", Exception)
    try:
        nv.nvmlInit()
    except error as exc:
        return GpuReport(note=f"NVML could not start: {exc}")
    except OSError as exc:  # the library itself is missing
        return GpuReport(note=f"NVML library not found: {exc}")
    try:
        devices = []
        held: int | None = None
        for index in range(int(nv.nvmlDeviceGetCount())):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            memory = nv.nvmlDeviceGetMemoryInfo(handle)
            devices.append(GpuDevice(index, _text(nv.nvmlDeviceGetName(handle)),
                                     int(memory.total), int(memory.used)))
            if pid is None:
                continue
            try:
                processes = nv.nvmlDeviceGetComputeRunningProcesses(handle)
            except error:
                continue
            for proc in processes:
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid == pid and used is not None:
                    held = (held or 0) + int(used)
        if not devices:
            return GpuReport(note="NVML found no NVIDIA GPU")
        return GpuReport(tuple(devices), held)
    except error as exc:
        return GpuReport(note=f"NVML query failed: {exc}")
    finally:
        with contextlib.suppress(error):
            nv.nvmlShutdown()
