"""KL divergence of a model from a reference, with the statistics ``llama-perplexity
--kl-divergence`` prints, computed without its 16-bit storage error.

The reference is kept per scored token as its ``k`` most probable tokens with exact float64
log-probabilities, the log of the probability mass left outside them, and the exact log-probability
of the token that follows. KL divergence is then computed over ``k + 1`` outcomes (the top ``k``
tokens and "any other token"). That is the divergence of the distributions coarsened to those
outcomes, so it is never negative, never above the full divergence, and exactly 0 when the model is
the reference. When ``k`` covers the vocabulary it is the full divergence. Everything else
(PPL ratio, Δp, same top token) uses exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.metrics.logprobs import log_softmax

KLD_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001)
DP_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001)


@dataclass(frozen=True)
class ReferenceRows:
    """What the reference model contributes for ``n`` scored tokens."""

    top_ids: NDArray[np.int32]  # (n, k), most probable first; ties by lower token id
    top_logp: NDArray[np.float64]  # (n, k)
    tail_logp: NDArray[np.float64]  # (n,), log of the mass outside top_ids; -inf if none
    target_logp: NDArray[np.float64]  # (n,), log p(next token)


def _top_k(logp: NDArray[np.float64], k: int) -> NDArray[np.int32]:
    n, n_vocab = logp.shape
    if k >= n_vocab:
        cand = np.broadcast_to(np.arange(n_vocab), (n, n_vocab))
    else:
        cand = np.argpartition(-logp, k - 1, axis=1)[:, :k]
        # argpartition may cut a tie at the k-th value arbitrarily; which tied token is kept
        # does not change any statistic, but ordering must be deterministic for top-1.
    vals = np.take_along_axis(logp, cand, axis=1)
    order = np.lexsort((cand, -vals), axis=1)  # by probability, then by lower id
    return np.take_along_axis(cand, order, axis=1).astype(np.int32)


def _tail_logp(exp_shifted: NDArray[np.float32], top_ids: NDArray[np.int32]) -> NDArray[np.float64]:
    total = exp_shifted.sum(axis=1, dtype=np.float64)
    top = np.take_along_axis(exp_shifted, top_ids, axis=1).sum(axis=1, dtype=np.float64)
    rest = np.maximum(total - top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(rest) - np.log(total)


def reference_rows(
    logits: NDArray[np.float32], targets: NDArray[np.int32], k: int
) -> ReferenceRows:
    """Summarize the reference's logits (shape ``(n, n_vocab)``) for later comparisons."""
    logp, exp_shifted = log_softmax(logits)
    ids = _top_k(logp, k)
    return ReferenceRows(
        top_ids=ids,
        top_logp=np.take_along_axis(logp, ids, axis=1),
        tail_logp=_tail_logp(exp_shifted, ids),
        target_logp=logp[np.arange(len(targets)), targets],
    )


@dataclass(frozen=True)
class TokenComparison:
    kld: NDArray[np.float64]
    nll: NDArray[np.float64]  # of the model
    nll_ref: NDArray[np.float64]
    p_diff: NDArray[np.float64]  # p_model(next) - p_ref(next)
    same_top: NDArray[np.bool_]


def compare_tokens(
    ref: ReferenceRows, logits: NDArray[np.float32], targets: NDArray[np.int32]
) -> TokenComparison:
    """Per-token divergence of the model whose ``logits`` are given from the reference."""
    logq, exp_shifted = log_softmax(logits)
    rows = np.arange(len(targets))
    q_top = np.take_along_axis(logq, ref.top_ids, axis=1)
    p_top = np.exp(ref.top_logp)
    kld = (p_top * (ref.top_logp - q_top)).sum(axis=1)
    p_tail = np.exp(ref.tail_logp)
    q_tail_logp = _tail_logp(exp_shifted, ref.top_ids)
    has_tail = p_tail > 0
    kld[has_tail] += p_tail[has_tail] * (ref.tail_logp[has_tail] - q_tail_logp[has_tail])
    nll = -logq[rows, targets]
    nll_ref = -ref.target_logp
    return TokenComparison(
        kld=kld,
        nll=nll,
        nll_ref=nll_ref,
        p_diff=np.exp(-nll) - np.exp(-nll_ref),
        same_top=np.argmax(logits, axis=1) == ref.top_ids[:, 0],
    )


@dataclass(frozen=True)
class Estimate:
    value: float
    err: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "err": self.err}


def _mean_and_err(x: NDArray[np.float64]) -> Estimate:
    # llama.cpp's mean_and_uncertainty: population variance / (n - 1), 0 for n <= 10.
    n = x.size
    mean = float(x.sum() / n)
    var = float(np.square(x).sum() / n - mean * mean)
    return Estimate(mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def _covariance(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    n = a.size
    if n < 10:
        return 0.0
    return float(((a * b).sum() / n - (a.sum() / n) * (b.sum() / n)) / (n - 1))


def _percentile(sorted_values: NDArray[np.float64], fraction: float) -> float:
    # llama.cpp interpolates linearly at fraction * (n - 1), as NumPy's default method does.
    return float(np.percentile(sorted_values, 100.0 * fraction))


@dataclass(frozen=True)
class KLDResult:
    n_tokens: int
    n_chunks: int
    top_k: int  # reference tokens kept per position; >= n_vocab means exact
    n_vocab: int
    ppl: Estimate
    ppl_ref: Estimate
    ln_ppl_cor: float
    ln_ppl_ratio: Estimate
    ppl_ratio: Estimate
    ppl_diff: Estimate
    kld: Estimate
    kld_max: float
    kld_median: float
    kld_min: float
    kld_percentiles: dict[float, float]
    p_diff: Estimate
    p_diff_max: float
    p_diff_median: float
    p_diff_min: float
    p_diff_percentiles: dict[float, float]
    rms_p_diff: Estimate
    same_top: Estimate
    chunk_kld: NDArray[np.float64] = field(repr=False)  # mean KLD of each chunk
    chunk_nll: NDArray[np.float64] = field(repr=False)
    chunk_nll_ref: NDArray[np.float64] = field(repr=False)
    chunk_same_top: NDArray[np.int64] = field(repr=False)  # count per chunk

    @property
    def exact(self) -> bool:
        return self.top_k >= self.n_vocab

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, Estimate):
                out[name] = value.to_dict()
            elif isinstance(value, np.ndarray):
                out[name] = value.tolist()
            elif isinstance(value, dict):
                out[name] = {f"{100 * q:g}": v for q, v in value.items()}
            else:
                out[name] = value
        out["exact"] = self.exact
        return out


def summarize(chunks: list[TokenComparison], top_k: int, n_vocab: int) -> KLDResult:
    """The statistics of ``llama-perplexity --kl-divergence`` over all chunks."""
    if not chunks:
        raise ValueError("no chunks to summarize")
    kld = np.concatenate([c.kld for c in chunks])
    nll = np.concatenate([c.nll for c in chunks])
    nll_ref = np.concatenate([c.nll_ref for c in chunks])
    p_diff = np.concatenate([c.p_diff for c in chunks])
    same = np.concatenate([c.same_top for c in chunks])
    n = kld.size

    log_ppl = _mean_and_err(nll)
    log_ppl_ref = _mean_and_err(nll_ref)
    cov = _covariance(nll, nll_ref)
    denom = log_ppl.err * log_ppl_ref.err
    ratio_ln = log_ppl.value - log_ppl_ref.value
    ratio_ln_err = math.sqrt(max(0.0, log_ppl.err**2 + log_ppl_ref.err**2 - 2.0 * cov))
    ppl = Estimate(math.exp(log_ppl.value), math.exp(log_ppl.value) * log_ppl.err)
    ppl_ref = Estimate(math.exp(log_ppl_ref.value), math.exp(log_ppl_ref.value) * log_ppl_ref.err)
    ppl_cov = ppl.value * ppl_ref.value * cov
    mse = _mean_and_err(np.square(p_diff))
    rms = math.sqrt(mse.value)
    top = float(same.sum()) / n

    kld_sorted = np.sort(kld)
    dp_sorted = np.sort(p_diff)
    return KLDResult(
        n_tokens=n,
        n_chunks=len(chunks),
        top_k=top_k,
        n_vocab=n_vocab,
        ppl=ppl,
        ppl_ref=ppl_ref,
        ln_ppl_cor=cov / denom if denom > 0 else float("nan"),
        ln_ppl_ratio=Estimate(ratio_ln, ratio_ln_err),
        ppl_ratio=Estimate(math.exp(ratio_ln), math.exp(ratio_ln) * ratio_ln_err),
        ppl_diff=Estimate(
            ppl.value - ppl_ref.value,
            math.sqrt(max(0.0, ppl.err**2 + ppl_ref.err**2 - 2.0 * ppl_cov)),
        ),
        kld=_mean_and_err(kld),
        kld_max=float(kld_sorted[-1]),
        kld_median=float(np.median(kld_sorted)),
        kld_min=float(kld_sorted[0]),
        kld_percentiles={q: _percentile(kld_sorted, q) for q in KLD_PERCENTILES},
        p_diff=_mean_and_err(p_diff),
        p_diff_max=float(dp_sorted[-1]),
        p_diff_median=float(np.median(dp_sorted)),
        p_diff_min=float(dp_sorted[0]),
        p_diff_percentiles={q: _percentile(dp_sorted, q) for q in DP_PERCENTILES},
        rms_p_diff=Estimate(rms, 0.5 / rms * mse.err if rms > 0 else 0.0),
        same_top=Estimate(top, math.sqrt(top * (1.0 - top) / (n - 1)) if n > 1 else 0.0),
        chunk_kld=np.array([c.kld.mean() for c in chunks]),
        chunk_nll=np.array([c.nll.mean() for c in chunks]),
        chunk_nll_ref=np.array([c.nll_ref.mean() for c in chunks]),
        chunk_same_top=np.array([int(c.same_top.sum()) for c in chunks], dtype=np.int64),
    )
