"""Timings of a run's models: llama-bench's throughput (alone, or two models interleaved) and
memory of load plus a batch, each measured once (or again, to confirm a failure), never beside a
heavy step, on the machine whose fingerprint they are kept with.

No pytest here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pytest_quantcheck import machine
from pytest_quantcheck.machine import Fingerprint
from pytest_quantcheck.metrics.memory import MemoryUsage
from pytest_quantcheck.metrics.throughput import ThroughputRun
from pytest_quantcheck.run.store import ModelStore


class ModelFile(Protocol):
    """What a timing needs of a model: its name (results are kept by it) and its file."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...


@dataclass
class Timings:
    """Throughput and memory of the run's models, by name, with the ``store``'s engines."""

    store: ModelStore
    speed: dict[str, ThroughputRun] = field(default_factory=dict)
    speed_pairs: dict[tuple[str, str], tuple[ThroughputRun, ThroughputRun]] = field(
        default_factory=dict)
    memory_usage: dict[str, MemoryUsage] = field(default_factory=dict)
    _fingerprint: Fingerprint | None = None

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = self.store.timing_engine.fingerprint()
        return self._fingerprint

    def throughput(self, model: ModelFile, again: bool = False) -> ThroughputRun:
        """The model's throughput run; ``again``: a new run, which replaces the last."""
        if again or model.name not in self.speed:
            s = self.store.settings
            fingerprint = self.fingerprint()
            start = time.perf_counter()
            with machine.timing():  # waits for heavy steps of other workers and processes
                self.speed[model.name] = self.store.timing_engine.throughput(
                    model.path, s.bench_prompt, s.bench_gen, s.bench_repetitions,
                    n_batch=s.n_batch, fingerprint=fingerprint)
            self.store.steps.append(f"throughput of {model.name}: {time.perf_counter() - start:.1f} s")
        return self.speed[model.name]

    def throughput_pair(self, model: ModelFile, other: ModelFile,
                        again: bool = False) -> tuple[ThroughputRun, ThroughputRun]:
        """Both models' throughput, their repetitions alternating (ABAB), for a comparison of
        two variants of this run: slow drift of the machine hits both alike."""
        key = (model.name, other.name)
        if again or key not in self.speed_pairs:
            s = self.store.settings
            start = time.perf_counter()
            with machine.timing():
                mine, theirs = self.store.timing_engine.throughput_interleaved(
                    [model.path, other.path], s.bench_prompt, s.bench_gen, s.bench_repetitions,
                    n_batch=s.n_batch, fingerprint=self.fingerprint())
            self.speed_pairs[key] = (mine, theirs)
            self.store.steps.append(f"throughput of {model.name} and {other.name}, interleaved:"
                              f" {time.perf_counter() - start:.1f} s")
        return self.speed_pairs[key]

    def memory(self, model: ModelFile) -> MemoryUsage:
        if model.name not in self.memory_usage:
            with self.store.step(f"memory of {model.name}"):
                self.memory_usage[model.name] = self.store.timing_engine.memory(model.path,
                                                                          self.store.protocol)
        return self.memory_usage[model.name]
