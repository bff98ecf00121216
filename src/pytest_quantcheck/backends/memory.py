"""Memory of load plus evaluation, measured in a child process (see
:mod:`pytest_quantcheck.metrics.memory` for why): this module is the parent's side, which runs
the ``memory`` command of :mod:`~pytest_quantcheck.backends.child` (it loads the model, decodes
one batch the shape of the scoring protocol's, and prints what it used as JSON) and reads that
JSON back. It does not load llama.cpp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pytest_quantcheck import gpu
from pytest_quantcheck.backends import BackendError, RunOptions
from pytest_quantcheck.metrics.memory import MemoryUsage


def measure(path: Path, options: RunOptions, n_ctx: int, n_seq: int, n_batch: int,
            timeout: float = 600.0) -> MemoryUsage:
    cmd = [sys.executable, "-m", "pytest_quantcheck.backends.child", "memory", str(path),
           str(options.threads()), str(options.n_gpu_layers), str(n_ctx), str(n_seq), str(n_batch)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{path}: measuring memory took over {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BackendError(f"{path}: measuring memory failed: {last}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return MemoryUsage(data["rss_before"], data["rss_peak"], _report(data["gpu"]),
                       data["gpu_used_before"])


def _report(data: dict[str, object]) -> gpu.GpuReport:
    devices = tuple(gpu.GpuDevice(**d) for d in data["devices"])  # type: ignore[attr-defined]
    held = data["process_bytes"]
    return gpu.GpuReport(devices, held if isinstance(held, int) else None, str(data["note"]))
