"""Throughput with ``llama-bench``'s protocol and statistics.

A test is prompt processing (``pp``: ``n_prompt`` tokens decoded in batches, BOS first) or text
generation (``tg``: ``n_gen`` tokens decoded one at a time), run once as a warm-up and then
``repetitions`` times from an empty cache; only the decoding is timed. Each repetition gives one
tokens/s sample; the summary is their mean and sample standard deviation, as llama-bench prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


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

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "n_prompt": self.n_prompt, "n_gen": self.n_gen,
                "n_threads": self.n_threads, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
                "tokens_per_s": self.mean, "sd": self.sd, "samples": self.samples.tolist()}


