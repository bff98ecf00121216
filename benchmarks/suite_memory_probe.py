"""Where a pytest run's memory goes: a pytest plugin that ``bench_big_vocab_suite.py`` loads
(``-p suite_memory_probe``) into the suite run it measures.

With ``QC_SUITE_PROBE=PATH`` set it writes, when pytest unconfigures, the process's high-water
mark of resident memory (``VmHWM`` of ``/proc/self/status``: exact, whatever happened between
samples) as JSON to PATH. With ``QC_SUITE_TRACE=1`` too it samples, every
``QC_SUITE_INTERVAL`` seconds (default 0.2), ``/proc/self/smaps`` sorted by what is mapped:

* ``weights``: pages of ``.gguf`` files (llama.cpp maps the model; what a decode touched is
  resident);
* ``store``: pages of files under ``$QUANTCHECK_CACHE_DIR`` (the stored reference, mapped);
* ``anon``: anonymous memory: the interpreter's and NumPy's heap, llama.cpp's buffers (KV
  cache, compute buffers, logits);
* ``files``: everything else mapped (shared libraries).

and the bytes ``tracemalloc`` traces (every Python object and NumPy array: ours), with the
NumPy allocation sites at the largest traced moment. Tracing costs time and some memory of its
own, so the benchmark times a run without it and reads the breakdown from a second run.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

NUMPY_DOMAIN = 389047  # the tracemalloc domain NumPy reports its array data in
HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+(?:\s+(.*))?$")
KIB = 1024


def smaps(cache: str) -> dict[str, int]:
    """Resident bytes of this process by kind of mapping (see the module docstring)."""
    parts = {"weights": 0, "store": 0, "anon": 0, "files": 0}
    kind = "anon"
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
        for line in f:
            header = HEADER.match(line)
            if header:
                path = (header.group(1) or "").strip()
                if not path or path.startswith("["):
                    kind = "anon"
                elif path.endswith(".gguf"):
                    kind = "weights"
                elif cache and path.startswith(cache):
                    kind = "store"
                else:
                    kind = "files"
            elif line.startswith("Rss:"):
                parts[kind] += int(line.split()[1]) * KIB
    return parts


def status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text(encoding="utf-8")
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * KIB if match else 0


class Probe:
    def __init__(self, out: Path, trace: bool, interval: float) -> None:
        self.out, self.trace, self.interval = out, trace, interval
        self.cache = os.path.realpath(os.environ.get("QUANTCHECK_CACHE_DIR", "")) + os.sep
        self.samples: list[dict[str, int | float]] = []
        self.sites: list[tuple[str, int]] = []  # NumPy allocation sites at the traced maximum
        self.traced_max = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.t0 = time.perf_counter()

    def sample(self) -> None:
        row: dict[str, int | float] = {"t": time.perf_counter() - self.t0,
                                       "rss": status_bytes("VmRSS"), **smaps(self.cache)}
        traced = tracemalloc.get_traced_memory()[0]
        row["traced"] = traced
        self.samples.append(row)
        if traced > self.traced_max + 4 * 2**20:  # a new maximum: where NumPy's bytes are now
            self.traced_max = traced
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.DomainFilter(True, NUMPY_DOMAIN)])
            self.sites = [(str(s.traceback), s.size) for s in snap.statistics("lineno")[:8]]

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        if self.trace:
            tracemalloc.start(1)
            self.sample()  # before any model: the interpreter, pytest, NumPy, the plugin
            self.thread = threading.Thread(target=self.run, name="memory-probe", daemon=True)
            self.thread.start()

    def finish(self) -> None:
        data: dict[str, Any] = {"vm_hwm": status_bytes("VmHWM")}
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.sample()
            data.update(samples=self.samples, numpy_sites=self.sites,
                        traced_peak=tracemalloc.get_traced_memory()[1],
                        tracemalloc_own=tracemalloc.get_tracemalloc_memory())
            tracemalloc.stop()
        self.out.write_text(json.dumps(data), encoding="utf-8")


KEY = pytest.StashKey[Probe]()


def pytest_configure(config: pytest.Config) -> None:
    out = os.environ.get("QC_SUITE_PROBE")
    if out:
        probe = Probe(Path(out), os.environ.get("QC_SUITE_TRACE") == "1",
                      float(os.environ.get("QC_SUITE_INTERVAL", "0.2")))
        config.stash[KEY] = probe
        probe.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    probe = config.stash.get(KEY, None)
    if probe is not None:
        probe.finish()
