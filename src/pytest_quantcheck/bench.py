"""llama-bench's tests run on a backend: one setting (the plugin's throughput check and
``quantcheck bench``), several models with their repetitions interleaved, or a sweep over thread
counts and test sizes (``quantcheck bench -t 1,2,4 -p 128,512``).

The statistics of a result (tokens/s samples, mean ± sd, the roofline) live in
metrics/throughput.py; this module decodes and times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

import numpy as np

from pytest_quantcheck import gpu, machine
from pytest_quantcheck.backends import Backend, RunOptions
from pytest_quantcheck.gguf_file import GGUFError, read_gguf
from pytest_quantcheck.machine import Fingerprint
from pytest_quantcheck.metrics.throughput import BenchResult, Sweep, ThroughputRun, bytes_per_token
from pytest_quantcheck.variants import check_gguf_path


@dataclass(frozen=True)
class Setting:
    """One test of a sweep: a pp test (``n_gen`` 0) or a tg test (``n_prompt`` 0) at a thread
    count."""

    n_threads: int
    n_prompt: int
    n_gen: int


def sweep_settings(threads: Sequence[int], n_prompts: Sequence[int],
                   n_gens: Sequence[int]) -> list[Setting]:
    """Every setting of a sweep in llama-bench's order: thread counts outermost, then each
    prompt length's pp test, then each generation length's tg test; a length of 0 is no test
    (llama-bench's ``-p 0``)."""
    return [Setting(t, n_p, n_g) for t in threads
            for n_p, n_g in [(p, 0) for p in n_prompts if p] + [(0, g) for g in n_gens if g]]


def _model_bytes_per_token(path: Path) -> int | None:
    try:
        return bytes_per_token(read_gguf(path, decode_strings=False).tensors)
    except GGUFError:
        return None


@dataclass(frozen=True)
class Bench:
    backend: Backend
    options: RunOptions = RunOptions()

    def bench(
        self, model_path: Path, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 5,
        n_batch: int = 2048, n_ubatch: int = 512, seed: int = 0,
    ) -> list[BenchResult]:
        """``llama-bench``'s pp and tg tests: each in a fresh context, warmed up once, then timed
        ``repetitions`` times from an empty cache (decoding only)."""
        return self.bench_interleaved([model_path], n_prompt, n_gen, repetitions, n_batch,
                                      n_ubatch, seed)[0]

    def bench_interleaved(
        self, model_paths: list[Path], n_prompt: int = 512, n_gen: int = 128,
        repetitions: int = 5, n_batch: int = 2048, n_ubatch: int = 512, seed: int = 0,
    ) -> list[list[BenchResult]]:
        """:meth:`bench` of several models whose repetitions alternate (ABAB...): slow drift of
        the machine during the measurement hits every model alike, so their comparison is
        paired in time. One list of results per model, in the order given."""
        for path in model_paths:
            check_gguf_path(path)
        return self._tests(model_paths, [(n_prompt, 0), (0, n_gen)], repetitions, n_batch,
                           n_ubatch, seed)

    def _tests(
        self, model_paths: list[Path], tests: list[tuple[int, int]], repetitions: int,
        n_batch: int, n_ubatch: int, seed: int = 0,
    ) -> list[list[BenchResult]]:
        """The ``(n_prompt, n_gen)`` tests, one after another, on models loaded once (their files
        checked by the caller); a test of 0 tokens is skipped."""
        tests = [(n_p, n_g) for n_p, n_g in tests if n_p + n_g]
        size = max([1] + [n_p + n_g for n_p, n_g in tests])  # one input serves every test
        models = []
        results: list[list[BenchResult]] = [[] for _ in model_paths]
        try:
            for path in model_paths:
                models.append(self.backend.load(path, self.options))
            for n_p, n_g in tests:
                contexts, inputs = [], []
                try:
                    for model in models:
                        rng = np.random.default_rng(seed)
                        tokens = rng.integers(0, model.n_vocab, size=size).astype(np.int32)
                        if model.add_bos:
                            tokens[0] = model.bos_token
                        contexts.append(model.open_bench(n_p + n_g, n_batch, n_ubatch))
                        inputs.append(tokens)
                    for ctx, tokens in zip(contexts, inputs, strict=True):  # warm-up, as llama-bench
                        if n_p:
                            ctx.prompt(tokens[:n_p])
                        if n_g:
                            ctx.generate(tokens[:1])
                    seconds: list[list[float]] = [[] for _ in models]
                    for _ in range(repetitions):
                        for i, (ctx, tokens) in enumerate(zip(contexts, inputs, strict=True)):
                            ctx.clear()
                            start = time.perf_counter_ns()
                            if n_p:
                                ctx.prompt(tokens[:n_p])
                            if n_g:
                                ctx.generate(tokens[:n_g])
                            seconds[i].append((time.perf_counter_ns() - start) / 1e9)
                finally:
                    for ctx in contexts:
                        ctx.close()
                test = f"pp{n_p}" if n_p else f"tg{n_g}"
                for i, times in enumerate(seconds):
                    results[i].append(BenchResult(test, n_p, n_g, self.options.threads(), n_batch,
                                                  n_ubatch, np.array(times)))
        finally:
            for model in models:
                model.close()
        return results

    def fingerprint(self) -> Fingerprint:
        """The machine as throughput records identify it (see machine.py)."""
        return machine.fingerprint(
            system_info=self.backend.system_info(), llama_cpp=self.backend.version,
            threads=self.options.threads(), gpu=gpu.query().names,
            n_gpu_layers=self.options.n_gpu_layers)

    def throughput(
        self, model_path: Path, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 5,
        n_batch: int = 2048, n_ubatch: int = 512, fingerprint: Fingerprint | None = None,
    ) -> ThroughputRun:
        """:meth:`bench`, with where it ran and the roofline: the memory bandwidth (probed
        right after the timings) and the weight bytes a generated token reads."""
        return self.throughput_interleaved([model_path], n_prompt, n_gen, repetitions, n_batch,
                                           n_ubatch, fingerprint)[0]

    def throughput_interleaved(
        self, model_paths: list[Path], n_prompt: int = 512, n_gen: int = 128,
        repetitions: int = 5, n_batch: int = 2048, n_ubatch: int = 512,
        fingerprint: Fingerprint | None = None,
    ) -> list[ThroughputRun]:
        """:meth:`throughput` of several models, their repetitions alternating."""
        fingerprint = fingerprint or self.fingerprint()
        benched = self.bench_interleaved(model_paths, n_prompt, n_gen, repetitions, n_batch,
                                         n_ubatch)
        bandwidth = machine.memory_bandwidth(self.options.threads())
        return [ThroughputRun({r.test[:2]: r for r in results}, fingerprint, bandwidth,
                              _model_bytes_per_token(path))
                for path, results in zip(model_paths, benched, strict=True)]

    def sweep(
        self, model_path: Path, settings: Sequence[Setting], repetitions: int = 5,
        n_batch: int = 2048, n_ubatch: int = 512,
    ) -> Sweep:
        """Every setting (:func:`sweep_settings`), in order, each as :meth:`bench` times a
        test. The model is loaded once per run of settings at one thread count (llama.cpp fixes
        the threads when it loads), and the memory bandwidth probed after that count's tests."""
        check_gguf_path(model_path)
        fingerprint = self.fingerprint()
        results: list[BenchResult] = []
        bandwidth: dict[int, float] = {}
        for n_threads, same in groupby(settings, key=lambda s: s.n_threads):
            at = replace(self, options=replace(self.options, n_threads=n_threads))
            results += at._tests([model_path], [(s.n_prompt, s.n_gen) for s in same],
                                 repetitions, n_batch, n_ubatch)[0]
            bandwidth[n_threads] = machine.memory_bandwidth(n_threads)
        return Sweep(tuple(results), fingerprint, bandwidth, _model_bytes_per_token(model_path))


__all__ = ["Bench", "Setting", "sweep_settings"]
