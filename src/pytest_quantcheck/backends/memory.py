"""Memory of load plus evaluation, measured in a child process (see
:mod:`pytest_quantcheck.metrics.memory` for why). Run as a module, it is that child: it loads the
model, decodes one batch the shape of the scoring protocol's, and prints what it used as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_quantcheck import gpu
from pytest_quantcheck.backends import BackendError, RunOptions
from pytest_quantcheck.metrics.memory import MemoryUsage, reset_peak, resident


def measure(path: Path, options: RunOptions, n_ctx: int, n_seq: int, n_batch: int,
            timeout: float = 600.0) -> MemoryUsage:
    cmd = [sys.executable, "-m", "pytest_quantcheck.backends.memory", str(path),
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


def main(argv: Sequence[str]) -> int:
    import numpy as np

    from pytest_quantcheck.backends.llamacpp import LlamaCppModel

    path = Path(argv[0])
    threads, layers, n_ctx, n_seq, n_batch = (int(a) for a in argv[1:6])
    before_gpu = gpu.query()
    reset_peak()
    rss_before, _ = resident()
    try:
        model = LlamaCppModel(path, RunOptions(n_threads=threads, n_gpu_layers=layers))
        ctx = model.open_context(n_ctx, n_seq, n_batch)
        tokens = np.random.default_rng(0).integers(0, model.n_vocab, size=(n_seq, n_ctx))
        ctx.score_chunks(tokens.astype(np.int32), n_ctx // 2)
        at_peak = gpu.query(os.getpid())
        ctx.close()
        model.close()
    except (BackendError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    _, rss_peak = resident()
    print(json.dumps({
        "rss_before": rss_before, "rss_peak": rss_peak, "gpu_used_before": before_gpu.used_bytes(),
        "gpu": {"devices": [d.__dict__ for d in at_peak.devices],
                "process_bytes": at_peak.process_bytes, "note": at_peak.note},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
