"""KL divergence of a model from a reference, with the statistics ``llama-perplexity
--kl-divergence`` prints, computed without its 16-bit storage error.

For each scored token the reference is kept as the smallest set of its most probable tokens that
holds all but ``tail_mass`` of its probability (at most ``max_tokens`` of them), with their
log-probabilities, plus the log of the mass left outside the set and the exact log-probability of
the token that follows. KL divergence is computed over the kept tokens and one "any other token"
outcome: the divergence of the two distributions coarsened to those outcomes. It is never
negative, never above the full divergence, exactly 0 when the model is the reference, and the full
divergence when the set covers the vocabulary. What it can miss is bounded by the uncovered mass,
which every result reports (``ref_tail_mass``). PPL ratio, Δp and same-top use exact values.

Kept log-probabilities are float32, as llama.cpp's logits are; the compared model's are rounded
the same way before subtracting, so identical logits give identical terms.
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
DEFAULT_TAIL_MASS = 1e-4
DEFAULT_MAX_TOKENS = 4096


@dataclass(frozen=True)
class ReferenceRows:
    """What the reference model contributes for ``n`` scored tokens, rows stored CSR-style."""

    offsets: NDArray[np.int64]  # (n + 1,): row i's kept tokens are ids[offsets[i]:offsets[i+1]]
    ids: NDArray[np.int32]  # most probable first; ties by lower token id
    logp: NDArray[np.float32]
    tail_logp: NDArray[np.float64]  # (n,), log of the mass outside the kept tokens; -inf if none
    target_logp: NDArray[np.float64]  # (n,), log p(next token)
    top1: NDArray[np.int32]  # (n,), the reference's most probable token

    def row_index(self) -> NDArray[np.int64]:
        return np.repeat(np.arange(len(self.tail_logp)), np.diff(self.offsets))


def _sorted_candidates(logp: NDArray[np.float64], max_tokens: int) -> NDArray[np.int64]:
    n, n_vocab = logp.shape
    if max_tokens >= n_vocab:
        cand = np.broadcast_to(np.arange(n_vocab), (n, n_vocab))
    else:
        cand = np.argpartition(-logp, max_tokens - 1, axis=1)[:, :max_tokens]
    vals = np.take_along_axis(logp, cand, axis=1)
    order = np.lexsort((cand, -vals), axis=1)  # by probability, then by lower id
    return np.take_along_axis(cand, order, axis=1)


def _tail_logp(exp_shifted: NDArray[np.float32], rows: NDArray[np.int64],
               ids: NDArray[np.int32]) -> NDArray[np.float64]:
    total = exp_shifted.sum(axis=1, dtype=np.float64)
    kept = np.bincount(rows, weights=exp_shifted[rows, ids].astype(np.float64),
                       minlength=len(total))
    rest = np.maximum(total - kept, 0.0)
    # A row that keeps the whole vocabulary has no tail, whatever the rounding of two sums says.
    rest[np.bincount(rows, minlength=len(total)) >= exp_shifted.shape[1]] = 0.0
    with np.errstate(divide="ignore"):
        tail: NDArray[np.float64] = np.log(rest) - np.log(total)
    return tail


def reference_rows(
    logits: NDArray[np.float32],
    targets: NDArray[np.int32],
    tail_mass: float = DEFAULT_TAIL_MASS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> ReferenceRows:
    """Summarize the reference's logits (shape ``(n, n_vocab)``) for later comparisons."""
    logp, exp_shifted = log_softmax(logits)
    cand = _sorted_candidates(logp, max_tokens)
    cand_logp = np.take_along_axis(logp, cand, axis=1)
    covered = np.cumsum(np.exp(cand_logp), axis=1)
    # Keep tokens until the covered mass reaches 1 - tail_mass (the token that crosses included).
    counts = np.minimum((covered < 1.0 - tail_mass).sum(axis=1) + 1, cand.shape[1])
    if tail_mass <= 0.0:
        counts[:] = cand.shape[1]  # the sum of rounded terms may reach 1 before the last token
    mask = np.arange(cand.shape[1])[None, :] < counts[:, None]
    ids = cand[mask].astype(np.int32)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    rows = np.repeat(np.arange(len(counts)), counts)
    return ReferenceRows(
        offsets=offsets,
        ids=ids,
        logp=cand_logp[mask].astype(np.float32),
        tail_logp=_tail_logp(exp_shifted, rows, ids),
        target_logp=logp[np.arange(len(targets)), targets],
        top1=cand[:, 0].astype(np.int32),
    )


@dataclass(frozen=True)
class TokenComparison:
    kld: NDArray[np.float64]
    nll: NDArray[np.float64]  # of the model
    nll_ref: NDArray[np.float64]
    p_diff: NDArray[np.float64]  # p_model(next) - p_ref(next)
    same_top: NDArray[np.bool_]
    ref_tail_mass: NDArray[np.float64]  # reference mass outside the kept tokens


COMPARISON_FIELDS = ("kld", "nll", "nll_ref", "p_diff", "same_top", "ref_tail_mass")


def compare_tokens(
    ref: ReferenceRows, logits: NDArray[np.float32], targets: NDArray[np.int32]
) -> TokenComparison:
    """Per-token divergence of the model whose ``logits`` are given from the reference."""
    logq, exp_shifted = log_softmax(logits)
    n = len(targets)
    rows = ref.row_index()
    q_kept = logq[rows, ref.ids].astype(np.float32)
    terms = np.exp(ref.logp.astype(np.float64)) * (ref.logp - q_kept).astype(np.float64)
    kld: NDArray[np.float64] = np.bincount(rows, weights=terms, minlength=n).astype(np.float64)
    p_tail = np.exp(ref.tail_logp)
    has_tail = p_tail > 0
    q_tail_logp = _tail_logp(exp_shifted, rows, ref.ids)
    kld[has_tail] += p_tail[has_tail] * (ref.tail_logp[has_tail] - q_tail_logp[has_tail])
    nll = -logq[np.arange(n), targets]
    nll_ref = -ref.target_logp
    return TokenComparison(
        kld=kld,
        nll=nll,
        nll_ref=nll_ref,
        p_diff=np.exp(-nll) - np.exp(-nll_ref),
        same_top=np.argmax(logits, axis=1) == ref.top1,
        ref_tail_mass=p_tail,
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
    n_vocab: int
    ref_tail_mass: float  # mean reference mass outside the kept tokens; 0 means exact
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
    token_kld: NDArray[np.float64] = field(repr=False)  # (n_chunks, scored per chunk)
    token_nll: NDArray[np.float64] = field(repr=False)  # the model's, same shape
    chunk_kld: NDArray[np.float64] = field(repr=False)  # mean KLD of each chunk
    chunk_nll: NDArray[np.float64] = field(repr=False)
    chunk_nll_ref: NDArray[np.float64] = field(repr=False)
    chunk_same_top: NDArray[np.int64] = field(repr=False)  # count per chunk

    @property
    def exact(self) -> bool:
        return self.ref_tail_mass == 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, Estimate):
                out[name] = value.to_dict()
            elif name.startswith("token_"):
                continue  # per-token values: too many for a report; chunk means summarize them
            elif isinstance(value, np.ndarray):
                out[name] = value.tolist()
            elif isinstance(value, dict):
                out[name] = {f"{100 * q:g}": v for q, v in value.items()}
            else:
                out[name] = value
        out["exact"] = self.exact
        return out


def summarize(chunks: list[TokenComparison], n_vocab: int) -> KLDResult:
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
    ppl = Estimate(math.exp(log_ppl.value), math.exp(log_ppl.value) * log_ppl.err)
    ppl_ref = Estimate(math.exp(log_ppl_ref.value), math.exp(log_ppl_ref.value) * log_ppl_ref.err)
    # llama.cpp takes these paired uncertainties as var(a) + var(b) - 2 cov(a, b): the same
    # quantity as the variance of the differences, but a difference of large, rounded terms,
    # whose residue (about 1e-9 on the demo model) depends on the CPU's kernels. Computed from
    # the per-token differences, a model compared with itself gives exactly 0 on any machine.
    ratio_ln_err = _mean_and_err(nll - nll_ref).err
    ppl_diff_err = _mean_and_err(ppl.value * nll - ppl_ref.value * nll_ref).err  # delta method
    mse = _mean_and_err(np.square(p_diff))
    rms = math.sqrt(mse.value)
    top = float(same.sum()) / n

    kld_sorted = np.sort(kld)
    dp_sorted = np.sort(p_diff)
    return KLDResult(
        n_tokens=n,
        n_chunks=len(chunks),
        n_vocab=n_vocab,
        ref_tail_mass=float(np.concatenate([c.ref_tail_mass for c in chunks]).mean()),
        ppl=ppl,
        ppl_ref=ppl_ref,
        ln_ppl_cor=cov / denom if denom > 0 else float("nan"),
        ln_ppl_ratio=Estimate(ratio_ln, ratio_ln_err),
        ppl_ratio=Estimate(math.exp(ratio_ln), math.exp(ratio_ln) * ratio_ln_err),
        ppl_diff=Estimate(ppl.value - ppl_ref.value, ppl_diff_err),
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
        token_kld=np.stack([c.kld for c in chunks]),
        token_nll=np.stack([c.nll for c in chunks]),
        chunk_kld=np.array([c.kld.mean() for c in chunks]),
        chunk_nll=np.array([c.nll.mean() for c in chunks]),
        chunk_nll_ref=np.array([c.nll_ref.mean() for c in chunks]),
        chunk_same_top=np.array([int(c.same_top.sum()) for c in chunks], dtype=np.int64),
    )
