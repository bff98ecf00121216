"""Log-probabilities from logits with llama.cpp's own arithmetic, in bounded memory, on threads.

``llama-perplexity`` takes the row maximum in float32, subtracts it in float32, exponentiates in
float32 (``expf``) and sums in double. We do the same, so our numbers equal theirs to the last
printed digit instead of being "close"; only the order of the double sum differs (see
:func:`row_sums`), by about 1e-16.

At real vocabularies (128k-262k tokens) this arithmetic, not the model, is most of the cost of
scoring, so it runs a block of :data:`ROW_BLOCK` rows at a time in a per-thread float32 scratch
buffer (no float64 or full-size copy of a batch of logits is ever made), the blocks spread over
``threads`` workers: NumPy releases the GIL inside its loops, so they run in parallel, as
llama-perplexity's worker threads do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

ROW_BLOCK = 8  # rows a worker takes at once: 8 MiB of scratch at a 262,144-token vocabulary

BlockWork = Callable[[int, int, NDArray[np.float32]], None]


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    # One pool per thread count for the life of the process: scoring calls it for every chunk.
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quantcheck-rows")


_local = threading.local()


def _scratch(n_vocab: int) -> NDArray[np.float32]:
    buf: NDArray[np.float32] | None = getattr(_local, "scratch", None)
    if buf is None or buf.shape[1] != n_vocab:
        buf = np.empty((ROW_BLOCK, n_vocab), dtype=np.float32)
        _local.scratch = buf
    return buf


def _run(work: BlockWork, lo: int, hi: int, n_vocab: int) -> None:
    work(lo, hi, _scratch(n_vocab))


def map_blocks(work: BlockWork, n_rows: int, n_vocab: int, threads: int = 1) -> None:
    """Call ``work(lo, hi, scratch)`` for every block of :data:`ROW_BLOCK` rows in
    ``0 .. n_rows``, on ``threads`` threads; ``scratch`` is the calling thread's own
    ``(ROW_BLOCK, n_vocab)`` float32 buffer. ``work`` writes its results into disjoint slices."""
    blocks = [(lo, min(lo + ROW_BLOCK, n_rows)) for lo in range(0, n_rows, ROW_BLOCK)]
    if threads <= 1 or len(blocks) <= 1:
        for lo, hi in blocks:
            _run(work, lo, hi, n_vocab)
        return
    for future in [_pool(threads).submit(_run, work, lo, hi, n_vocab) for lo, hi in blocks]:
        future.result()


def row_sums(terms: NDArray[np.float32]) -> NDArray[np.float64]:
    """Sum of each row of float32 terms, accumulated in double as llama.cpp does.

    NumPy converts the terms in buffers and sums them pairwise, where llama.cpp adds them into
    one double in order: the two differ by about 1e-16 of the sum. (Float32 partial sums would
    save 8 % of a row's time and bias a peaked row's sum low by 2e-8, visible in a printed
    perplexity; not worth it.)"""
    sums: NDArray[np.float64] = terms.sum(axis=1, dtype=np.float64)
    return sums


def shift_exp(block: NDArray[np.float32], scratch: NDArray[np.float32],
              maximum: NDArray[np.float32] | None = None) -> tuple[NDArray[np.float32],
                                                                 NDArray[np.float64]]:
    """Rows' maxima and sums of ``exp(row - max)`` (the log of which is the log-sum-exp);
    ``scratch[:len(block)]`` holds the terms after. ``maximum`` may be given when the caller
    has it (from an argmax)."""
    m = block.max(axis=1) if maximum is None else maximum
    out = scratch[: len(block)]
    np.subtract(block, m[:, None], out=out)
    np.exp(out, out=out)
    return m, row_sums(out)


def target_logprobs(logits: NDArray[np.float32], targets: NDArray[np.int32],
                    threads: int = 1) -> NDArray[np.float64]:
    """log p(target) for each row of ``logits`` (shape ``(n, n_vocab)``)."""
    result = np.empty(len(targets), dtype=np.float64)

    def work(lo: int, hi: int, scratch: NDArray[np.float32]) -> None:
        block = logits[lo:hi]
        m, sums = shift_exp(block, scratch)
        lse = np.log(sums)
        picked = block[np.arange(hi - lo), targets[lo:hi]] - m  # float32, as llama.cpp
        result[lo:hi] = picked.astype(np.float64) - lse

    map_blocks(work, len(targets), logits.shape[1], threads)
    return result


def logprobs_at(logits: NDArray[np.float32], rows: NDArray[np.int64],
                targets: NDArray[np.int64], threads: int = 1) -> NDArray[np.float64]:
    """log p(``targets[i]``) in row ``rows[i]`` of ``logits``; a row asked for several times
    is normalized once, and no row is copied (task scoring reads llama.cpp's buffer)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    maxima = np.empty(len(unique), dtype=np.float32)
    lse = np.empty(len(unique), dtype=np.float64)

    def work(lo: int, hi: int, scratch: NDArray[np.float32]) -> None:
        for j in range(lo, hi):
            row = logits[unique[j]]
            maxima[j] = row.max()
            np.subtract(row, maxima[j], out=scratch[j - lo])
        out = scratch[: hi - lo]
        np.exp(out, out=out)
        lse[lo:hi] = np.log(row_sums(out))

    map_blocks(work, len(unique), logits.shape[1], threads)
    picked = logits[rows, targets] - maxima[inverse]  # float32, as llama.cpp
    result: NDArray[np.float64] = picked.astype(np.float64) - lse[inverse]
    return result
