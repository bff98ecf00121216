"""The machine a speed or memory figure was measured on: its fingerprint, and its memory bandwidth.

Throughput depends on the CPU and its instruction sets, the thread count, the OS, the llama.cpp
build and the GPU; a baseline measured elsewhere says nothing about this machine. A
:class:`Fingerprint` is stored with every throughput and memory record, and comparisons are made
only between records whose fingerprints agree (fields a user chooses to ignore, and a kernel's
build tag, aside).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import platform
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pytest_quantcheck import cache


@dataclass(frozen=True)
class Fingerprint:
    cpu: str  # model name, as /proc/cpuinfo gives it
    cpu_features: tuple[str, ...]  # what the llama.cpp build uses, as llama.cpp reports it
    threads: int
    os: str  # system, release and architecture
    llama_cpp: str  # the inference build
    gpu: tuple[str, ...]  # device names; empty without NVML or a GPU
    n_gpu_layers: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_features"] = list(self.cpu_features)
        data["gpu"] = list(self.gpu)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        """From a stored record; a missing or malformed field reads as unknown, which differs
        from every real value (so a damaged record is never compared)."""
        def text(key: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else "unknown"

        def names(key: str) -> tuple[str, ...]:
            value = data.get(key)
            return tuple(str(v) for v in value) if isinstance(value, list) else ("unknown",)

        def number(key: str) -> int:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else -1

        return cls(text("cpu"), names("cpu_features"), number("threads"), text("os"),
                   text("llama_cpp"), names("gpu"), number("n_gpu_layers"))

    def identity(self) -> dict[str, Any]:
        """The fields as machines are told apart: all of them, but of ``os`` only the system,
        the kernel's version number and the architecture. What follows the number, a build tag
        or a distribution's patch level (``6.18.44-fc-v595`` and ``6.18.44-fc-v1147``: one
        kernel source, built twice), changes nothing a timing sees, while everything else here
        can: the CPU and the instruction sets the build uses set the kernels' speed, threads and
        offloaded layers the parallelism, the llama.cpp build the code itself, the GPUs the
        device."""
        data = self.to_dict()
        system, _, rest = self.os.partition(" ")
        release, _, arch = rest.partition(" ")
        number = re.match(r"\d+(\.\d+)*", release)
        if number is not None:
            data["os"] = f"{system} {number.group(0)} {arch}"
        return data

    def differing(self, other: Fingerprint, ignore: Sequence[str] = ()) -> list[str]:
        """The fields, not ignored, that tell this machine from ``other``."""
        mine, theirs = self.identity(), other.identity()
        return [name for name in FIELDS if name not in ignore and mine[name] != theirs[name]]

    def differences(self, other: Fingerprint, ignore: Sequence[str] = ()) -> list[str]:
        """``"threads 4, now 2"`` for every field that tells the machines apart and is not
        ignored."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{name} {_show(mine[name])}, now {_show(theirs[name])}"
                for name in self.differing(other, ignore)]

    def summary(self, threads: bool = True) -> str:
        """One line for messages: CPU, threads (unless ``threads`` is false: a sweep's results
        each say theirs), GPU offload, build."""
        where = f"{self.cpu}, {self.threads} threads" if threads else self.cpu
        if self.n_gpu_layers:
            where += f", {self.n_gpu_layers} layers on {', '.join(self.gpu) or 'GPU'}"
        return f"{where}, {self.llama_cpp}"


# what tells machines apart; config.FINGERPRINT_FIELDS names the same (a test holds them equal)
FIELDS = tuple(f.name for f in fields(Fingerprint))


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(map(str, value)) + "]" if value else "none"
    return str(value)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_features(system_info: str) -> tuple[str, ...]:
    """The features llama.cpp's ``llama_print_system_info`` reports as enabled ("AVX2 = 1")."""
    return tuple(sorted({m.group(1) for m in re.finditer(r"([A-Za-z0-9_]+) = 1\b", system_info)}))


def os_name() -> str:
    return f"{platform.system()} {platform.release()} {platform.machine()}"


def fingerprint(*, system_info: str, llama_cpp: str, threads: int, gpu: Sequence[str],
                n_gpu_layers: int) -> Fingerprint:
    return Fingerprint(cpu_model(), cpu_features(system_info), threads, os_name(), llama_cpp,
                       tuple(gpu), n_gpu_layers)


@functools.lru_cache(maxsize=4)
def memory_bandwidth(threads: int, size_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes per second ``threads`` threads read from main memory: the best of ``repeats`` passes
    over an array far larger than any CPU cache, each thread OR-reducing its share of 64-bit
    words (the reduction keeps up with memory, so memory is what is timed)."""
    words = np.ones(size_bytes // 8, dtype=np.uint64)
    parts = np.array_split(words, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.bitwise_or.reduce, parts))
            best = min(best, time.perf_counter() - start)
    return words.nbytes / best


# ---- one timing at a time ----------------------------------------------------------------------
#
# A timing taken while another process decodes a model measures the contention, not the model.
# Heavy steps (quantizing, evaluating) hold a shared lock; a timing holds it exclusively, so under
# pytest-xdist, or with two runs on one machine sharing a cache, it waits until no heavy step
# runs and none starts before it ends. A second "gate" lock gives a waiting timing priority:
# heavy steps pass the gate before taking their shared lock, and a waiting timing holds it.

_held: list[str] = []  # lock modes this process holds, innermost last


def _open(path: Path) -> Any:
    try:
        return path.open("a+b")
    except OSError as exc:
        raise cache.CacheError(f"{path.parent}: cannot create lock file ({exc.strerror}); set"
                               " QUANTCHECK_CACHE_DIR to a writable directory") from None


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with _open(path) as handle:
        fcntl.flock(handle.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_paths() -> tuple[Path, Path]:
    folder = cache.ensure_dir(cache.cache_root() / "locks")
    return folder / "machine-gate.lock", folder / "machine.lock"


@contextlib.contextmanager
def heavy_step() -> Iterator[None]:
    """Hold the machine shared: any number of heavy steps, but no timing, run meanwhile."""
    if _held:  # nested in a step or a timing of this process: already covered
        yield
        return
    gate, work = _lock_paths()
    with _open(gate) as g:
        fcntl.flock(g.fileno(), fcntl.LOCK_SH)  # waits while a timing holds or awaits the machine
        with _flock(work, fcntl.LOCK_SH):
            fcntl.flock(g.fileno(), fcntl.LOCK_UN)
            _held.append("shared")
            try:
                yield
            finally:
                _held.pop()


@contextlib.contextmanager
def timing() -> Iterator[None]:
    """Hold the machine exclusively for a throughput measurement."""
    if "shared" in _held:
        raise RuntimeError("a timing cannot start inside a heavy step of the same process")
    if _held:
        yield
        return
    gate, work = _lock_paths()
    with _flock(gate, fcntl.LOCK_EX), _flock(work, fcntl.LOCK_EX):
        _held.append("exclusive")
        try:
            yield
        finally:
            _held.pop()
