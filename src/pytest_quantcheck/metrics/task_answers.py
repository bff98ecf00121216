"""Task accuracy (HellaSwag, Winogrande, multiple choice), kept per task for paired statistics.

The interval printed is llama-perplexity's: a 95 % Wilson score interval over the tasks. Gates
decide with exact binomial tests instead (see :mod:`pytest_quantcheck.stats`).
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

Z95 = 1.95996398454  # llama-perplexity's z for its 95 % interval


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``correct / n``, as llama-perplexity computes it."""
    if n == 0:
        return (0.0, 1.0)
    freq = correct / n
    zz = z * z / n
    half = zz * math.sqrt(n * (4.0 * freq * (1 - freq) + zz)) / (z + z)
    return ((freq + zz * 0.5 - half) / (1.0 + zz), (freq + zz * 0.5 + half) / (1.0 + zz))


def pack_bits(flags: NDArray[np.bool_]) -> str:
    """Per-task correctness, one bit a task, as base64 text (baselines store it so)."""
    return base64.b64encode(np.packbits(flags.astype(np.uint8)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> NDArray[np.bool_]:
    raw = np.frombuffer(base64.b64decode(text.encode(), validate=True), dtype=np.uint8)
    bits = np.unpackbits(raw)
    if bits.size < n or bits[n:].any():
        raise ValueError(f"the packed correctness does not hold {n} tasks")
    return bits[:n].astype(np.bool_)


def selection_digest(mode: str, file_sha256: str, task_numbers: NDArray[np.int32]) -> str:
    h = hashlib.sha256(f"{mode}\n{file_sha256}\n".encode())
    h.update(np.asarray(task_numbers, dtype="<i4").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class TaskResult:
    mode: str  # "hellaswag", "winogrande" or "multiple-choice"
    source: str  # the task file
    file_sha256: str
    n_available: int  # tasks in the file
    # the selection: each selected task's number in the file, in scoring order
    task_numbers: NDArray[np.int32] = field(repr=False)
    # per task scored, the first n_tasks of the selection (all of them unless a sequential look
    # stopped early): whether the answer is right, and the choice the model picked
    correct: NDArray[np.bool_] = field(repr=False)
    chosen: NDArray[np.int32] = field(repr=False)
    # tasks scored to produce this result in the call that returned it; 0 when all
    # came from the result cache (run accounting, not part of the measurement)
    decoded: int = field(default=0, compare=False)

    @property
    def complete(self) -> bool:
        return self.correct.size >= self.task_numbers.size

    def first(self, n: int | None) -> TaskResult:
        """The result over the first ``n`` tasks of the selection (None: as it is)."""
        if n is None or n >= self.n_tasks:
            return self
        return replace(self, correct=self.correct[:n], chosen=self.chosen[:n])

    @property
    def n_tasks(self) -> int:
        return int(self.correct.size)

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_tasks if self.n_tasks else 0.0

    def interval(self) -> tuple[float, float]:
        return wilson(self.n_correct, self.n_tasks)

    def selection(self) -> str:
        """What must match for two results to be paired task by task: the file, the mode and
        the tasks selected, in order (two results of one selection pair on the tasks both
        scored)."""
        return selection_digest(self.mode, self.file_sha256, self.task_numbers)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval()
        return {"mode": self.mode, "file": self.source, "file_sha256": self.file_sha256,
                "accuracy": self.accuracy, "interval95": [low, high], "n_tasks": self.n_tasks,
                "n_correct": self.n_correct, "n_available": self.n_available,
                "correct": [bool(c) for c in self.correct],
                "task_numbers": [int(i) for i in self.task_numbers[:self.n_tasks]],
                "n_selected": int(self.task_numbers.size),
                "chosen": [int(c) for c in self.chosen]}

    def readable(self) -> str:
        low, high = self.interval()
        return (f"{self.mode} accuracy: {self.accuracy:.4%} ({self.n_correct}/{self.n_tasks}"
                f" tasks), 95% Wilson interval [{low:.2%}, {high:.2%}]")
