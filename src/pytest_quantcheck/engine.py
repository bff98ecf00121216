"""Metrics of model files: the entry points the ``quantcheck`` command and the pytest plugin share.

They take paths, check them, load models through the backend, apply the scoring protocol, and
fetch or build the cached reference log-probabilities.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from pytest_quantcheck import cache, refstore
from pytest_quantcheck.backends import Backend, RunOptions, default_backend
from pytest_quantcheck.bench import Bench
from pytest_quantcheck.evaluation import (
    EvalTextError,
    ScoringProtocol,
    check_length,
    chunk_nll,
    compare_chunks,
    look_end,
    read_eval_text,
    tokens_digest,
)
from pytest_quantcheck.metrics.kld import (
    COMPARISON_FIELDS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TAIL_MASS,
    KLDResult,
    TokenComparison,
    summarize,
)
from pytest_quantcheck.metrics.memory import MemoryUsage
from pytest_quantcheck.metrics.perplexity import PerplexityResult, perplexity_from_nll
from pytest_quantcheck.metrics.task_answers import TaskResult
from pytest_quantcheck.progress import Progress
from pytest_quantcheck.refstore import (
    ReferenceStore,
    ReferenceStoreError,
    is_valid,
    open_reference,
    write_reference,
)
from pytest_quantcheck.results import Cached, ResultCache, ResultKey
from pytest_quantcheck.tasks.files import load as load_tasks
from pytest_quantcheck.tasks.scoring import score as score_tasks
from pytest_quantcheck.variants import check_gguf_path

P = ParamSpec("P")
R = TypeVar("R")


def _delegate(method: Callable[Concatenate[Bench, P], R]) -> Callable[Concatenate[Engine, P], R]:
    """``method`` of a :class:`Bench` on the engine's backend and options, as the engine's own."""
    @functools.wraps(method)
    def on_engine(engine: Engine, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(Bench(engine.backend, engine.options), *args, **kwargs)
    return on_engine


@dataclass(frozen=True)
class Engine:
    backend: Backend
    options: RunOptions = RunOptions()
    cache_dir: Path | None = None
    result_cache: bool = True  # per-chunk results on disk, by content (results.py)
    results: ResultCache = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", ResultCache(self.cache_dir, self.result_cache))

    @classmethod
    def default(cls, options: RunOptions = RunOptions(), cache_dir: Path | None = None,
                result_cache: bool = True) -> Engine:
        return cls(default_backend(), options, cache_dir, result_cache)

    def _result_key(self, kind: str, model_path: Path, text: bytes, proto: ScoringProtocol,
                    reference: str = "") -> ResultKey:
        return ResultKey(kind, cache.file_sha256(model_path, root=self.cache_dir),
                         hashlib.sha256(text).hexdigest(),
                         {**proto.describe(), "n_chunks": proto.n_chunks}, self.backend.version,
                         self.backend.system_info(), self.options.n_gpu_layers, reference)

    def perplexity(
        self, model_path: Path, text_path: Path, proto: ScoringProtocol,
        progress: Progress | None = None, upto: int | None = None,
    ) -> PerplexityResult:
        """Perplexity over every chunk or the first ``upto`` (rounded up to whole groups of
        ``n_seq``; a sequential look), from the result cache where it holds them; the result's
        ``decoded`` says how many chunks were decoded now (0: all from the cache)."""
        check_gguf_path(model_path)
        text = read_eval_text(text_path)
        def compute(start: int, want: int | None) -> Cached:
            model = self.backend.load(model_path, self.options)
            try:
                tokens = model.tokenize(text)
                n_total = check_length(tokens, proto, str(text_path))
                end = look_end(proto, n_total, want)
                nll = chunk_nll(model, tokens, proto, end, start, progress,
                                self.options.threads())
                return Cached({"token_nll": nll}, n_total,
                              tokens_digest(tokens[: n_total * proto.n_ctx]))
            finally:
                model.close()

        key = self._result_key("nll", model_path, text, proto)
        entry, decoded = self.results.extend(key, model_path.stem, upto, compute)
        end = look_end(proto, entry.n_total, upto)
        return replace(perplexity_from_nll(entry.arrays["token_nll"][:end], proto.n_ctx,
                                           entry.tokens_sha256, entry.n_total), decoded=decoded)

    def reference(
        self, ref_path: Path, text_path: Path, proto: ScoringProtocol,
        tail_mass: float = DEFAULT_TAIL_MASS, max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: Progress | None = None, upto: int | None = None,
    ) -> ReferenceStore:
        """The reference's log-probabilities on this text, from the cache or computed now: of
        every chunk, or of at least the first ``upto`` (whole groups; a sequential look). An
        entry holding more chunks serves fewer; a larger one is built by extending the largest
        held (its chunks copied, not decoded). Smaller entries stay (another process may be
        reading them); together they take less room than the full one."""
        check_gguf_path(ref_path)
        text = read_eval_text(text_path)
        root = self.cache_dir or cache.cache_root()
        ref_sha = cache.file_sha256(ref_path, root=root)
        text_sha = hashlib.sha256(text).hexdigest()
        key = cache.key_digest(ref_sha, text_sha, proto.describe(), proto.n_chunks, tail_mass,
                               max_tokens, self.backend.version)
        folder = root / "reference"
        prefix = f"{ref_path.stem}-{key[:20]}-"
        found, previous = refstore.held(folder, prefix, upto)
        if found is not None:
            return found
        final = folder / f"{prefix}{'all' if upto is None else look_end(proto, 2**31, upto)}"

        def build(tmp: Path) -> None:
            model = self.backend.load(ref_path, self.options)
            try:
                tokens = model.tokenize(text)
                n_total = check_length(tokens, proto, str(text_path))
                n_chunks = look_end(proto, n_total, upto)
                meta = {"model_sha256": ref_sha, "text_sha256": text_sha,
                        "tokens_sha256": tokens_digest(tokens[: n_total * proto.n_ctx]),
                        "backend": self.backend.version, "reference_key": key,
                        "n_available": n_total, "complete": n_chunks == n_total}
                write_reference(tmp, model, tokens, proto, n_chunks, meta, tail_mass, max_tokens,
                                progress, previous, self.options.threads())
            finally:
                model.close()

        built = cache.publish(final, build, is_valid)
        store = open_reference(final)
        copied = 0 if previous is None else min(previous.n_chunks, store.n_chunks)
        store = replace(store, decoded=store.n_chunks - copied if built else 0)
        return store

    def kl_divergence(
        self, ref_path: Path, model_path: Path, text_path: Path, proto: ScoringProtocol,
        tail_mass: float = DEFAULT_TAIL_MASS, max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: Progress | None = None, upto: int | None = None,
    ) -> KLDResult:
        """KL divergence of the model from the reference, over every chunk or the first
        ``upto``, cached and counted as :meth:`perplexity` is."""
        store = self.reference(ref_path, text_path, proto, tail_mass, max_tokens, progress, upto)
        check_gguf_path(model_path)
        text = read_eval_text(text_path)

        def compute(start: int, want: int | None) -> Cached:
            model = self.backend.load(model_path, self.options)
            try:
                tokens = model.tokenize(text)
                n_chunks = check_length(tokens, proto, str(text_path))
                if n_chunks != store.n_available or model.n_vocab != store.meta["n_vocab"] or (
                    tokens_digest(tokens[: n_chunks * proto.n_ctx]) != store.meta["tokens_sha256"]
                ):
                    raise EvalTextError(
                        f"{model_path}: tokenizes {text_path} differently from the reference"
                        f" {ref_path}; KL divergence needs models that share a vocabulary"
                    )
                end = look_end(proto, n_chunks, want)
                found = compare_chunks(model, tokens, proto, store.rows(start), end, start,
                                       progress, self.options.threads())
                arrays = {name: np.stack([getattr(c, name) for c in found])
                          for name in COMPARISON_FIELDS}
                return Cached(arrays, n_chunks, str(store.meta["tokens_sha256"]))
            finally:
                model.close()

        key = self._result_key("kld", model_path, text, proto,
                               reference=str(store.meta["reference_key"]))
        entry, decoded = self.results.extend(key, model_path.stem, upto, compute)
        end = look_end(proto, entry.n_total, upto)
        chunks = [TokenComparison(**{name: entry.arrays[name][i] for name in COMPARISON_FIELDS})
                  for i in range(end)]
        return replace(summarize(chunks, int(store.meta["n_vocab"])), decoded=decoded)

    def tasks(
        self, model_path: Path, task_path: Path, mode: str | None = None,
        limit: int | None = None, n_ctx: int = 512, n_parallel: int = 4, n_batch: int = 2048,
        progress: Progress | None = None, name: str | None = None, upto: int | None = None,
    ) -> TaskResult:
        """Accuracy on a HellaSwag, Winogrande or multiple-choice file with llama-perplexity's
        protocol: ``--<mode>-tasks limit -c n_ctx -np n_parallel -b n_batch`` (``n_parallel`` at
        least 4, as llama-perplexity raises it). ``upto``: score (or take from the result cache)
        at least the first ``upto`` tasks of the selection, not all (a sequential look); the
        batches are the full run's, so each answer is the one a full run gives. The result's
        ``decoded`` says how many tasks were scored now (the rest came from the result cache)."""
        check_gguf_path(model_path)
        task_set = load_tasks(task_path, mode, limit, name)
        n_parallel = max(4, n_parallel)
        total = n_parallel * n_ctx
        numbers = np.array([t.number for t in task_set.tasks], dtype=np.int32)

        def compute(start: int, upto: int | None) -> Cached:
            model = self.backend.load(model_path, self.options)
            try:
                ctx = model.open_batch(total, n_parallel, min(n_batch, total))
                try:
                    scored = score_tasks(task_set, model.tokenize, ctx, total, n_parallel,
                                         progress, start, upto, self.options.threads())
                finally:
                    ctx.close()
            finally:
                model.close()
            return Cached({"correct": scored.correct, "chosen": scored.chosen}, len(numbers),
                          task_set.sha256)

        # the answers, by content: the model, the task file and its selection, the batch layout
        key = ResultKey("tasks", cache.file_sha256(model_path, root=self.cache_dir),
                        task_set.sha256, {"mode": task_set.mode, "n_ctx": n_ctx,
                                          "n_parallel": n_parallel, "n_batch": n_batch,
                                          "tasks": hashlib.sha256(numbers.tobytes()).hexdigest()},
                        self.backend.version, self.backend.system_info(),
                        self.options.n_gpu_layers)
        entry, scored = self.results.extend(key, model_path.stem, upto, compute)
        return TaskResult(task_set.mode, str(task_path), task_set.sha256, task_set.n_available,
                          numbers, entry.arrays["correct"].astype(np.bool_),
                          entry.arrays["chosen"].astype(np.int32), decoded=scored)

    def memory(self, model_path: Path, proto: ScoringProtocol) -> MemoryUsage:
        """Resident (and GPU) memory of loading the model and decoding one chunk as a scoring pass
        does, measured apart from this process (see metrics/memory.py).

        Scoring decodes one chunk at a time (:func:`~pytest_quantcheck.evaluation.scored_groups`),
        not ``proto.n_seq`` side by side as llama-perplexity does, so a context of one sequence
        of ``n_ctx`` tokens, with ``n_batch`` clipped to it, is what it holds: measuring
        ``n_seq`` chunks would charge a KV cache and a logits buffer ``n_seq`` times the size
        (1 GiB rather than 256 MiB of logits at a 262,144-token vocabulary)."""
        check_gguf_path(model_path)
        return self.backend.measure_memory(model_path, self.options, proto.n_ctx, 1,
                                           min(proto.n_batch, proto.n_ctx))

    # llama-bench's timings live in bench.py; these keep the engine's callers working
    bench = _delegate(Bench.bench)
    bench_interleaved = _delegate(Bench.bench_interleaved)
    throughput = _delegate(Bench.throughput)
    throughput_interleaved = _delegate(Bench.throughput_interleaved)
    fingerprint = _delegate(Bench.fingerprint)


__all__ = ["Engine", "ReferenceStoreError"]
