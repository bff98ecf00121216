"""KL divergence of a model from a reference, with the statistics ``llama-perplexity
--kl-divergence`` prints, computed without its 16-bit storage error.

For each scored token the reference is kept as the smallest set of its most probable tokens that
holds all but ``tail_mass`` of its probability (at most ``max_tokens`` of them), with their
log-probabilities, plus the log of the mass left outside the set and the exact log-probability of
the token that follows. KL divergence is computed over the kept tokens and one "any other token"
outcome: the divergence of the two distributions coarsened to those outcomes. It is never
negative, never above the full divergence, exactly 0 when the model is the reference, and the full
divergence when the set covers the vocabulary. What it misses is at most ``tail_bound`` per token
(derived at :func:`compare_tokens`: about the uncovered mass times the log-range of the compared
model's tail), which every result reports as a mean (``kld_tail_bound``) with the uncovered mass
(``ref_tail_mass``). PPL ratio, Δp and same-top use exact values.

Kept log-probabilities are float32, as llama.cpp's logits are; the compared model's are rounded
the same way before subtracting, so identical logits give identical terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.metrics.logprobs import map_blocks, row_sums, shift_exp

KLD_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001)
DP_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001)
# Defaults chosen at real vocabularies (docs/big-vocabularies.md): at 1e-4 / 4096 a 262k-token
# model's mean KLD came out 0.59 % low, against +0.21 % for llama.cpp's 16-bit file; the missing
# part scales with the uncovered mass, which 1e-5 cuts tenfold, and the cap of 16,384 (64 KiB a
# token, an eighth of llama.cpp's 512 KiB at 262k) keeps uncertain positions from leaving more.
DEFAULT_TAIL_MASS = 1e-5
DEFAULT_MAX_TOKENS = 16384


@dataclass(frozen=True)
class ReferenceRows:
    """What the reference model contributes for ``n`` scored tokens, rows stored CSR-style."""

    offsets: NDArray[np.int64]  # (n + 1,): row i's kept tokens are ids[offsets[i]:offsets[i+1]]
    ids: NDArray[np.int32]  # ascending
    logp: NDArray[np.float32]
    tail_logp: NDArray[np.float64]  # (n,), log of the mass outside the kept tokens; -inf if none
    target_logp: NDArray[np.float64]  # (n,), log p(next token)
    top1: NDArray[np.int32]  # (n,), the reference's most probable token

    def row_index(self) -> NDArray[np.int64]:
        return np.repeat(np.arange(len(self.tail_logp)), np.diff(self.offsets))


def _with_ties(vals: NDArray[np.float32], kth: np.float32, count: int) -> NDArray[np.bool_]:
    """Mask of the ``count`` largest ``vals`` (``kth`` the smallest of them), equal values
    taken from the front: candidates are in id order, so ties go to the lower ids."""
    mask = vals > kth
    tied = np.flatnonzero(vals == kth)[: count - int(mask.sum())]
    mask[tied] = True
    return mask


def _candidates(shifted: NDArray[np.float32], floor: float, max_tokens: int
                ) -> tuple[NDArray[np.int64], bool]:
    """Ids, ascending, of every token whose ``shifted`` logit (its logit minus the row's
    maximum) is at least ``floor``, or of the row's ``max_tokens`` most probable (ties: lower
    ids) where there are more of those; and whether the cap cut the set.

    The cap's cut is found without sorting the vocabulary: a strided sample's order statistic
    gives a threshold that most likely leaves a little more than ``max_tokens`` tokens, and only
    those are partitioned (the whole row where the sample guessed too high)."""
    n_vocab = shifted.shape[0]
    cap = min(max_tokens, n_vocab)
    above = n_vocab if floor == -math.inf else int(np.count_nonzero(shifted >= floor))
    if above <= cap:
        return np.flatnonzero(shifted >= floor), False
    stride = 16
    sample = shifted[::stride]
    rank = min(len(sample) - 1, (cap * 5) // (4 * stride) + 8)
    guess = max(float(np.partition(sample, len(sample) - 1 - rank)[len(sample) - 1 - rank]),
                floor)
    cand = np.flatnonzero(shifted >= guess)
    if len(cand) < cap:
        cand = np.flatnonzero(shifted >= floor)
    vals = shifted[cand]
    kth = np.partition(vals, len(vals) - cap)[len(vals) - cap]
    return cand[_with_ties(vals, kth, cap)], True


def _kept(cand: NDArray[np.int64], vals: NDArray[np.float32], lse: float, tail_mass: float
          ) -> NDArray[np.bool_] | None:
    """Which candidates to keep: the fewest most probable whose mass reaches ``1 - tail_mass``
    (the token that crosses included; ties to the lower id); None when all of them do not
    reach it. Only the values are sorted, not the ids: the kept set stays in id order."""
    if tail_mass <= 0.0:
        return np.ones(len(cand), dtype=np.bool_)  # rounded terms may reach 1 before the last
    ordered = np.sort(vals)[::-1]
    covered = np.cumsum(np.exp(ordered.astype(np.float64) - lse))
    count = int((covered < 1.0 - tail_mass).sum()) + 1
    if count > len(cand):
        return None
    return _with_ties(vals, ordered[count - 1], count)


def reference_rows(
    logits: NDArray[np.float32],
    targets: NDArray[np.int32],
    tail_mass: float = DEFAULT_TAIL_MASS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threads: int = 1,
) -> ReferenceRows:
    """Summarize the reference's logits (shape ``(n, n_vocab)``) for later comparisons: per
    row, the fewest most probable tokens that hold all but ``tail_mass`` of the probability (at
    most ``max_tokens``; ties to the lower id), in id order."""
    n, n_vocab = logits.shape
    kept: list[NDArray[np.int32]] = [np.empty(0, np.int32)] * n  # int32 ids: half of int64's room
    kept_logp: list[NDArray[np.float32]] = [np.empty(0, np.float32)] * n
    tail_logp = np.empty(n, dtype=np.float64)
    target_logp = np.empty(n, dtype=np.float64)
    top1 = np.empty(n, dtype=np.int32)
    # A token below tail_mass / n_vocab is never needed: all of them together hold less than
    # tail_mass. Its log-probability is shifted - lse with lse >= 0, so shifted below this floor
    # rules it out before lse is known (candidates are picked before the exponentials overwrite
    # the shifted logits).
    floor = math.log(tail_mass / n_vocab) if tail_mass > 0 else -math.inf

    def work(lo: int, hi: int, scratch: NDArray[np.float32]) -> None:
        block = logits[lo:hi]
        top = block.argmax(axis=1)
        m = block[np.arange(hi - lo), top]
        out = scratch[: hi - lo]
        np.subtract(block, m[:, None], out=out)
        picked = [_candidates(out[r], floor, max_tokens) for r in range(hi - lo)]
        vals = [out[r, cand] for r, (cand, _) in enumerate(picked)]
        np.exp(out, out=out)
        sums = row_sums(out)
        lse = np.log(sums)
        for r, (cand, capped) in enumerate(picked):
            row = block[r]
            mask = _kept(cand, vals[r], float(lse[r]), tail_mass)
            if mask is None and (capped or floor == -math.inf):
                mask = np.ones(len(cand), dtype=np.bool_)
            elif mask is None:
                # rounding left the floor's set just short of 1 - tail_mass: every token counts
                cand, _ = _candidates(row - m[r], -math.inf, max_tokens)
                vals[r] = row[cand] - m[r]
                mask = _kept(cand, vals[r], float(lse[r]), tail_mass)
                mask = np.ones(len(cand), dtype=np.bool_) if mask is None else mask
            kept[lo + r] = cand[mask].astype(np.int32)
            kept_logp[lo + r] = (vals[r][mask].astype(np.float64) - lse[r]).astype(np.float32)
            target_logp[lo + r] = float(row[targets[lo + r]] - m[r]) - lse[r]
        counts = np.array([len(k) for k in kept[lo:hi]])
        tail_logp[lo:hi] = _tail_logp(out, sums, np.repeat(np.arange(hi - lo), counts),
                                      np.concatenate(kept[lo:hi]), counts)
        top1[lo:hi] = top

    map_blocks(work, n, n_vocab, threads)
    counts = np.array([len(k) for k in kept], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ReferenceRows(
        offsets=offsets,
        ids=np.concatenate(kept) if n else np.empty(0, np.int32),
        logp=np.concatenate(kept_logp) if n else np.empty(0, np.float32),
        tail_logp=tail_logp,
        target_logp=target_logp,
        top1=top1,
    )


def _gather(a: NDArray[np.float32], rows: NDArray[np.int64], ids: NDArray[Any]
            ) -> NDArray[np.float32]:
    """``a[rows, ids]`` of a block whose rows are contiguous, by flat index: several times
    faster than two-dimensional fancy indexing for the ~10^5 elements a block keeps."""
    picked: NDArray[np.float32] = (a[rows, ids] if not a.flags.c_contiguous
                                   else np.take(a.reshape(-1), rows * a.shape[1] + ids))
    return picked


def _tail_logp(terms: NDArray[np.float32], sums: NDArray[np.float64], rows: NDArray[np.int64],
               ids: NDArray[Any], counts: NDArray[Any]) -> NDArray[np.float64]:
    """Log of the mass outside the kept tokens of a block's rows, from the ``exp(row - max)``
    terms and their sums; the same arithmetic for the reference and the compared model, so a
    model compared with itself gets exactly the reference's tail."""
    kept = np.bincount(rows, weights=_gather(terms, rows, ids).astype(np.float64),
                       minlength=len(sums))
    rest = np.maximum(sums - kept, 0.0)
    # A row that keeps the whole vocabulary has no tail, whatever the rounding of two sums says.
    rest[counts >= terms.shape[1]] = 0.0
    with np.errstate(divide="ignore"):
        tail: NDArray[np.float64] = np.log(rest) - np.log(sums)
    return tail


@dataclass(frozen=True)
class TokenComparison:
    kld: NDArray[np.float64]
    nll: NDArray[np.float64]  # of the model
    nll_ref: NDArray[np.float64]
    p_diff: NDArray[np.float64]  # p_model(next) - p_ref(next)
    same_top: NDArray[np.bool_]
    ref_tail_mass: NDArray[np.float64]  # reference mass outside the kept tokens
    tail_bound: NDArray[np.float64]  # the full divergence is at most kld + tail_bound


COMPARISON_FIELDS = ("kld", "nll", "nll_ref", "p_diff", "same_top", "ref_tail_mass",
                     "tail_bound")


def compare_tokens(
    ref: ReferenceRows, logits: NDArray[np.float32], targets: NDArray[np.int32],
    threads: int = 1,
) -> TokenComparison:
    """Per-token divergence of the model whose ``logits`` are given from the reference.

    With the reference's tail T (the tokens it did not keep, mass P_T; the model's Q_T there),
    the full divergence exceeds the coarse one by
    ``M = sum_T p log(p/q) - P_T log(P_T/Q_T)``, which is >= 0 (log-sum inequality). Every
    tail token is at most as probable as the last kept one (``p_last``) and at least the
    model's least probable token (``q_min``), so ``sum_T p log p <= P_T log p_last`` and
    ``-sum_T p log q <= -P_T log q_min``:

        0 <= M <= P_T * (log(p_last / P_T) - log(q_min / Q_T)) = tail_bound

    Known at comparison time without the tail's token ids, and 0 when nothing is left out.
    """
    n, n_vocab = logits.shape
    counts = np.diff(ref.offsets)
    kld = np.empty(n, dtype=np.float64)
    nll = np.empty(n, dtype=np.float64)
    same_top = np.empty(n, dtype=np.bool_)
    q_tail_logp = np.empty(n, dtype=np.float64)
    q_min_logp = np.empty(n, dtype=np.float64)

    def work(lo: int, hi: int, scratch: NDArray[np.float32]) -> None:
        block = logits[lo:hi]
        top = block.argmax(axis=1)
        local = np.arange(hi - lo)
        m, sums = shift_exp(block, scratch, block[local, top])
        lse = np.log(sums)
        start, stop = int(ref.offsets[lo]), int(ref.offsets[hi])
        rows = np.repeat(local, counts[lo:hi])
        ids = ref.ids[start:stop]
        p_logp = ref.logp[start:stop]
        shifted = _gather(block, rows, ids) - m[rows]  # float32, as the full row's
        q_kept = (shifted.astype(np.float64) - lse[rows]).astype(np.float32)
        terms = np.exp(p_logp.astype(np.float64)) * (p_logp - q_kept).astype(np.float64)
        kld[lo:hi] = np.bincount(rows, weights=terms, minlength=hi - lo)
        q_tail_logp[lo:hi] = _tail_logp(scratch, sums, rows, ids, counts[lo:hi])
        nll[lo:hi] = lse - (block[local, targets[lo:hi]] - m).astype(np.float64)
        q_min_logp[lo:hi] = (block.min(axis=1) - m).astype(np.float64) - lse
        same_top[lo:hi] = top == ref.top1[lo:hi]

    map_blocks(work, n, n_vocab, threads)
    p_tail = np.exp(ref.tail_logp)
    has_tail = p_tail > 0
    tail_bound = np.zeros(n, dtype=np.float64)
    if has_tail.any():
        pt, qt = ref.tail_logp[has_tail], q_tail_logp[has_tail]
        kld[has_tail] += p_tail[has_tail] * (pt - qt)
        # log p_last: the least probable kept token (a row keeps at least one)
        last = np.minimum.reduceat(ref.logp, ref.offsets[:-1])[has_tail].astype(np.float64)
        tail_bound[has_tail] = np.maximum(
            p_tail[has_tail] * ((last - pt) - (q_min_logp[has_tail] - qt)), 0.0)
    nll_ref = -ref.target_logp
    return TokenComparison(
        kld=kld,
        nll=nll,
        nll_ref=nll_ref,
        p_diff=np.exp(-nll) - np.exp(-nll_ref),
        same_top=same_top,
        ref_tail_mass=p_tail,
        tail_bound=tail_bound,
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
    kld_tail_bound: float  # the full-vocabulary mean KLD lies in [kld, kld + kld_tail_bound]
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
    # chunks (tasks) decoded to produce this result in the call that returned it; 0 when all
    # came from the result cache (run accounting, not part of the measurement)
    decoded: int = field(default=0, compare=False)

    @property
    def exact(self) -> bool:
        return self.ref_tail_mass == 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, Estimate):
                out[name] = value.to_dict()
            elif name.startswith("token_") or name == "decoded":
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
        kld_tail_bound=float(np.concatenate([c.tail_bound for c in chunks]).mean()),
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
