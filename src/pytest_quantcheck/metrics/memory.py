"""Memory of loading and evaluating a model: resident memory from the kernel's accounting, device
memory from NVML.

A figure is taken in a fresh process that holds nothing but the interpreter and the bindings, so
it is the same whatever else a pytest session has loaded: the resident set before the model is
loaded, and the high-water mark after it was loaded and one scored chunk was decoded. Their
difference is what the model costs: mapped weights that were touched, the KV cache, compute
buffers and logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_quantcheck.gpu import GpuReport

MiB = 2**20


@dataclass(frozen=True)
class MemoryUsage:
    rss_before: int  # bytes resident before the model was loaded
    rss_peak: int  # high-water mark of resident bytes, after load and one scored chunk
    gpu: GpuReport = field(default_factory=GpuReport)  # at the peak, with the model loaded
    gpu_used_before: int = 0  # device bytes used by every process before the load

    @property
    def peak_bytes(self) -> int:
        """Resident memory of load plus evaluation."""
        return max(0, self.rss_peak - self.rss_before)

    @property
    def gpu_bytes(self) -> int | None:
        """Device memory the model took: NVML's figure for the process when it has one (not in
        every container), else the growth of device memory in use across the load."""
        if not self.gpu.available:
            return None
        if self.gpu.process_bytes is not None:
            return self.gpu.process_bytes
        return max(0, self.gpu.used_bytes() - self.gpu_used_before)

    def describe(self) -> str:
        text = f"peak RSS {self.peak_bytes / MiB:,.1f} MiB"
        gpu = self.gpu_bytes
        if gpu is None:
            return f"{text}, GPU memory not available ({self.gpu.note})"
        return f"{text}, GPU {gpu / MiB:,.1f} MiB on {', '.join(self.gpu.names)}"

    def to_dict(self) -> dict[str, Any]:
        return {"peak_rss_mib": self.peak_bytes / MiB, "rss_before_mib": self.rss_before / MiB,
                "gpu_mib": None if self.gpu_bytes is None else self.gpu_bytes / MiB,
                "gpu": list(self.gpu.names), "gpu_note": self.gpu.note}


def parse_status(text: str) -> tuple[int, int]:
    """Resident and high-water-mark bytes from the text of ``/proc/<pid>/status``."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number, _, unit = rest.strip().partition(" ")
            values[key] = int(number) * (1024 if unit.strip().lower() == "kb" else 1)
    if "VmRSS" not in values or "VmHWM" not in values:
        raise ValueError("no VmRSS / VmHWM lines")
    return values["VmRSS"], values["VmHWM"]


def resident(proc: Path = Path("/proc/self")) -> tuple[int, int]:
    """This process's resident bytes and their high-water mark.

    Linux's ``/proc`` is exact; elsewhere ``getrusage`` gives the high-water mark only, which
    then stands for both.
    """
    try:
        return parse_status((proc / "status").read_text())
    except (OSError, ValueError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return peak, peak


def reset_peak(proc: Path = Path("/proc/self")) -> bool:
    """Start the high-water mark afresh at the current resident size (Linux >= 4.0)."""
    try:
        (proc / "clear_refs").write_text("5")
    except OSError:
        return False
    return True
