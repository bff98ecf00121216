"""Throughput with ``llama-bench``'s protocol and statistics.

A test is prompt processing (``pp``: ``n_prompt`` tokens decoded in batches, BOS first) or text
generation (``tg``: ``n_gen`` tokens decoded one at a time), run once as a warm-up and then
``repetitions`` times from an empty cache; only the decoding is timed. Each repetition gives one
tokens/s sample; the summary is their mean and sample standard deviation, as llama-bench prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.gguf_check import GGML_TYPE_SIZES, tensor_nbytes
from pytest_quantcheck.gguf_file import TensorInfo
from pytest_quantcheck.machine import Fingerprint
from pytest_quantcheck.stats import mean_interval


@dataclass(frozen=True)
class BenchResult:
    test: str  # "pp512", "tg128"
    n_prompt: int
    n_gen: int
    n_threads: int
    n_batch: int
    n_ubatch: int
    seconds: NDArray[np.float64] = field(repr=False)  # one per repetition

    @property
    def samples(self) -> NDArray[np.float64]:
        """tokens/s of each repetition"""
        return (self.n_prompt + self.n_gen) / self.seconds

    @property
    def mean(self) -> float:
        return float(self.samples.mean())

    @property
    def sd(self) -> float:
        # llama-bench: sqrt(sum(x^2)/(n-1) - mean^2 * n/(n-1)), the sample standard deviation
        return float(self.samples.std(ddof=1)) if self.samples.size > 1 else 0.0

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Where the typical tokens/s lies given the repetitions' scatter: Student's t interval
        of the mean log tokens/s, exponentiated. Timing noise is multiplicative (stats.py
        compares throughput on the log scale for the same reason), so the interval is never
        negative, as one of the mean itself can be under heavy noise, and reaches further up
        than down. It cannot show drift between runs. ``(nan, nan)`` with one repetition."""
        low, high = mean_interval(np.log(self.samples), confidence)
        return math.exp(low), math.exp(high)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        """From :meth:`to_dict`'s output (a baseline record); ``KeyError`` / ``ValueError`` /
        ``TypeError`` when it is not one."""
        samples = np.asarray(data["samples"], dtype=np.float64)
        if samples.ndim != 1 or samples.size < 1 or not np.all(samples > 0):
            raise ValueError("samples must be positive tokens/s values")
        tokens = int(data["n_prompt"]) + int(data["n_gen"])
        return cls(str(data["test"]), int(data["n_prompt"]), int(data["n_gen"]),
                   int(data["n_threads"]), int(data["n_batch"]), int(data["n_ubatch"]),
                   tokens / samples)

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "n_prompt": self.n_prompt, "n_gen": self.n_gen,
                "n_threads": self.n_threads, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
                "tokens_per_s": self.mean, "sd": self.sd, "samples": self.samples.tolist()}




def bytes_per_token(tensors: Mapping[str, TensorInfo]) -> int:
    """Weight bytes a generated token reads: every tensor once, except the token embedding
    table, of which one row is read, unless it doubles as the output matrix (no
    ``output.weight``)."""
    total = 0
    for name, t in tensors.items():
        if t.ggml_type not in GGML_TYPE_SIZES:
            continue
        size = tensor_nbytes(t.shape, t.ggml_type)
        if name == "token_embd.weight" and "output.weight" in tensors:
            size //= max(1, t.shape[-1])  # one row of n_vocab
        total += size
    return total


@dataclass(frozen=True)
class ThroughputRun:
    """One model's pp and tg results, where they were measured, and how near the hardware."""

    tests: dict[str, BenchResult]  # by phase: "pp", "tg"
    fingerprint: Fingerprint
    bandwidth: float | None = None  # bytes/s main memory delivers to the benchmark's threads
    bytes_per_token: int | None = None  # weight bytes a generated token reads

    def efficiency(self) -> float | None:
        """tg tokens/s x bytes read per token / memory bandwidth: 1.0 is the hardware limit of
        generation, which reads every weight once per token (above 1: the weights fit a cache)."""
        tg = self.tests.get("tg")
        if tg is None or not self.bandwidth or not self.bytes_per_token:
            return None
        return tg.mean * self.bytes_per_token / self.bandwidth

    def roofline(self) -> str:
        eff = self.efficiency()
        if eff is None or self.bandwidth is None:
            return ""
        return f"tg at {eff:.0%} of the {self.bandwidth / 1e9:.1f} GB/s memory bandwidth"

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint.to_dict(),
                "tests": {phase: r.to_dict() for phase, r in self.tests.items()},
                "bandwidth_gb_s": None if self.bandwidth is None else self.bandwidth / 1e9,
                "bytes_per_token": self.bytes_per_token, "efficiency": self.efficiency()}


@dataclass(frozen=True)
class Sweep:
    """The tests of ``quantcheck bench`` with lists (``-t 1,2,4 -p 128,512``), one result per
    setting in the order run, with the machine and each thread count's memory bandwidth."""

    results: tuple[BenchResult, ...]
    fingerprint: Fingerprint  # the machine; ``threads`` aside, each result has its own
    bandwidth: Mapping[int, float]  # bytes/s by thread count, probed after that count's tests
    bytes_per_token: int | None = None

    def efficiency(self, result: BenchResult) -> float | None:
        """A tg result's share of the roofline at its thread count (see
        :meth:`ThroughputRun.efficiency`); None for pp."""
        bandwidth = self.bandwidth.get(result.n_threads)
        if result.n_prompt or not result.n_gen or not bandwidth or not self.bytes_per_token:
            return None
        return result.mean * self.bytes_per_token / bandwidth

    def to_dict(self) -> dict[str, Any]:
        machine = {k: v for k, v in self.fingerprint.to_dict().items() if k != "threads"}
        threads = list(dict.fromkeys(r.n_threads for r in self.results))
        tests = []
        for r in self.results:
            low, high = r.interval()
            bandwidth = self.bandwidth.get(r.n_threads)
            tests.append({**r.to_dict(), "ci95_low": low, "ci95_high": high,
                          "bandwidth_gb_s": None if bandwidth is None else bandwidth / 1e9,
                          "efficiency": self.efficiency(r)})
        return {"machine": machine, "threads": threads, "bytes_per_token": self.bytes_per_token,
                "tests": tests}
