"""The ``llama-perplexity`` scoring protocol, driving any backend :class:`LoadedModel`.

The text is tokenized once (BOS per the vocabulary) and cut into ``n_chunks`` chunks of
``n_ctx`` tokens; each chunk is decoded from an empty cache with its first token replaced by
BOS when the vocabulary adds one, and only its second half is scored: the logits at positions
``n_ctx/2 .. n_ctx-2`` predict tokens ``n_ctx/2+1 .. n_ctx-1``. llama-perplexity decodes
``n_batch // n_ctx`` chunks side by side in one batch; we decode them one at a time, with the
same logits (see :func:`scored_groups`). Memory is bounded by one chunk's scored logits, whatever
the length of the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import LoadedModel
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.metrics.kld import (
    KLDResult,
    ReferenceRows,
    TokenComparison,
    compare_tokens,
    summarize,
)
from pytest_quantcheck.metrics.logprobs import target_logprobs
from pytest_quantcheck.metrics.perplexity import PerplexityResult, perplexity_from_nll


class EvalTextError(QuantcheckError, ValueError):
    """The evaluation text cannot be scored with these settings."""


@dataclass(frozen=True)
class ScoringProtocol:
    n_ctx: int = 512
    n_batch: int = 2048
    n_chunks: int | None = None  # None: every whole chunk in the text

    def __post_init__(self) -> None:
        if self.n_ctx < 4 or self.n_ctx % 2:
            raise ValueError(f"n_ctx must be an even number >= 4, not {self.n_ctx}")
        if self.n_batch < 1:
            raise ValueError(f"n_batch must be positive, not {self.n_batch}")
        if self.n_batch > self.n_ctx and self.n_batch % self.n_ctx:
            # llama-perplexity asserts the same: a batch holds whole chunks or part of one.
            raise ValueError(
                f"n_batch ({self.n_batch}) must be a multiple of n_ctx ({self.n_ctx}) or below it"
            )
        if self.n_chunks is not None and self.n_chunks < 1:
            raise ValueError(f"n_chunks must be positive, not {self.n_chunks}")

    @property
    def first(self) -> int:
        return self.n_ctx // 2

    @property
    def n_seq(self) -> int:
        return max(1, self.n_batch // self.n_ctx)

    @property
    def scored_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.first

    def chunk_count(self, n_tokens: int) -> int:
        available = n_tokens // self.n_ctx
        return available if self.n_chunks is None else min(self.n_chunks, available)

    def describe(self) -> dict[str, int | str]:
        return {"name": "llama-perplexity", "n_ctx": self.n_ctx, "n_batch": self.n_batch}


def read_eval_text(path: Path) -> bytes:
    """The file's bytes less one trailing newline, exactly what ``llama-perplexity -f`` scores."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EvalTextError(f"{path}: evaluation text not found; pass an existing file") from None
    except IsADirectoryError:
        raise EvalTextError(f"{path}: is a directory; pass a text file") from None
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data.strip():
        raise EvalTextError(f"{path}: evaluation text is empty; give it at least a few pages")
    return data


def tokens_digest(tokens: NDArray[np.int32]) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


def check_length(tokens: NDArray[np.int32], proto: ScoringProtocol, source: str) -> int:
    n_chunks = proto.chunk_count(len(tokens))
    if len(tokens) < 2 * proto.n_ctx:
        raise EvalTextError(
            f"{source}: tokenizes to {len(tokens)} tokens, fewer than the {2 * proto.n_ctx}"
            f" (2 x n_ctx) needed; use a longer text or a smaller n_ctx"
        )
    return n_chunks


@dataclass(frozen=True)
class ScoredGroup:
    first_chunk: int
    targets: NDArray[np.int32]  # (k, scored per chunk)
    logits: NDArray[np.float32]  # (k, scored per chunk, n_vocab); valid until the next group


def scored_groups(
    model: LoadedModel,
    tokens: NDArray[np.int32],
    proto: ScoringProtocol,
    n_chunks: int,
    progress: Callable[[int, int], None] | None = None,
    start_chunk: int = 0,
) -> Iterator[ScoredGroup]:
    """Decode chunks ``start_chunk .. n_chunks-1`` and yield the logits of their scored
    positions, one chunk at a time.

    llama-perplexity decodes ``n_seq`` chunks in one batch; each is its own sequence, masked
    from the others, and the batch is cut into the same physical batches of 512 tokens, so
    decoding them one by one gives the same logits bit for bit (tests/test_real_engine.py
    checks it) while llama.cpp's logits buffer holds one chunk's scored rows, not ``n_seq``
    chunks' (at a 262,144-token vocabulary, 256 MiB rather than 1 GiB at n_ctx 512)."""
    n_ctx, first = proto.n_ctx, proto.first
    ctx = model.open_context(n_ctx, 1, min(proto.n_batch, n_ctx))
    try:
        for start in range(start_chunk, n_chunks):
            inputs = tokens[start * n_ctx : (start + 1) * n_ctx].reshape(1, n_ctx).copy()
            if model.add_bos:
                inputs[:, 0] = model.bos_token
            logits = ctx.score_chunks(inputs, first)[:, :-1, :]
            targets = tokens[start * n_ctx : (start + 1) * n_ctx].reshape(1, n_ctx)[:, first + 1 :]
            yield ScoredGroup(start, targets, logits)
            if progress is not None:
                progress(start + 1, n_chunks)
    finally:
        ctx.close()


def look_end(proto: ScoringProtocol, n_total: int, upto: int | None) -> int:
    """Chunks to decode for ``upto`` (None: all): whole groups of ``n_seq``, as a full run
    decodes them, so a partial result holds the very values of the full one."""
    if upto is None or upto >= n_total:
        return n_total
    return min(n_total, -(-max(1, upto) // proto.n_seq) * proto.n_seq)


def chunk_nll(
    model: LoadedModel, tokens: NDArray[np.int32], proto: ScoringProtocol, n_chunks: int,
    start_chunk: int = 0, progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
) -> NDArray[np.float64]:
    """Per-token NLL of chunks ``start_chunk .. n_chunks-1``, shape ``(chunks, scored)``;
    the log-softmax on ``threads`` threads."""
    nll = np.empty((n_chunks - start_chunk, proto.scored_per_chunk), dtype=np.float64)
    for group in scored_groups(model, tokens, proto, n_chunks, progress, start_chunk):
        for row, (targets, logits) in enumerate(zip(group.targets, group.logits, strict=True)):
            nll[group.first_chunk - start_chunk + row] = -target_logprobs(logits, targets,
                                                                          threads)
    return nll


def perplexity(
    model: LoadedModel,
    text: bytes,
    proto: ScoringProtocol,
    *,
    source: str = "text",
    progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
) -> PerplexityResult:
    tokens = model.tokenize(text)
    n_chunks = check_length(tokens, proto, source)
    nll = chunk_nll(model, tokens, proto, n_chunks, progress=progress, threads=threads)
    return perplexity_from_nll(nll, proto.n_ctx, tokens_digest(tokens[: n_chunks * proto.n_ctx]))


def kl_divergence(
    model: LoadedModel,
    tokens: NDArray[np.int32],
    proto: ScoringProtocol,
    reference: Iterator[ReferenceRows],
    *,
    n_chunks: int,
    progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
) -> KLDResult:
    """Compare ``model`` chunk by chunk with reference rows (one :class:`ReferenceRows` a chunk)."""
    return summarize(compare_chunks(model, tokens, proto, reference, n_chunks, 0, progress,
                                    threads), model.n_vocab)


def compare_chunks(
    model: LoadedModel, tokens: NDArray[np.int32], proto: ScoringProtocol,
    reference: Iterator[ReferenceRows], n_chunks: int, start_chunk: int = 0,
    progress: Callable[[int, int], None] | None = None, threads: int = 1,
) -> list[TokenComparison]:
    """Chunks ``start_chunk .. n_chunks-1`` of ``model`` against the reference's rows of the
    same chunks."""
    comparisons = []
    for group in scored_groups(model, tokens, proto, n_chunks, progress, start_chunk):
        for targets, logits in zip(group.targets, group.logits, strict=True):
            comparisons.append(compare_tokens(next(reference), logits, targets, threads))
    return comparisons
