from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quantcheck.metrics.kld import compare_tokens, reference_rows, summarize


def full_kld(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """Direct NumPy KL(P || Q) over the whole vocabulary, in float64."""
    lp = p_logits.astype(np.float64)
    lq = q_logits.astype(np.float64)
    lp = lp - lp.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = lq - lq.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    return (np.exp(lp) * (lp - lq)).sum(1)


def pair(seed: int = 0, n: int = 300, vocab: int = 120, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    ref = (rng.standard_normal((n, vocab)) * 3).astype(np.float32)
    q = (ref + noise * rng.standard_normal((n, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, n).astype(np.int32)
    return ref, q, targets


def test_kld_is_exact_when_top_k_covers_the_vocabulary() -> None:
    ref, q, t = pair()
    cmp = compare_tokens(reference_rows(ref, t, tail_mass=0.0, max_tokens=120), q, t)
    # float32 logits arithmetic (as llama.cpp) against a float64 reference
    np.testing.assert_allclose(cmp.kld, full_kld(ref, q), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [1, 8, 32])
def test_top_k_kld_is_a_lower_bound_that_tightens_with_k(k: int) -> None:
    ref, q, t = pair()
    exact = full_kld(ref, q)
    approx = compare_tokens(reference_rows(ref, t, 0.0, max_tokens=k), q, t).kld
    assert np.all(approx >= -1e-12)
    assert np.all(approx <= exact + 1e-9)
    wider = compare_tokens(reference_rows(ref, t, 0.0, max_tokens=k * 2), q, t).kld
    assert wider.mean() >= approx.mean() - 1e-12


def test_model_against_itself_is_exactly_zero() -> None:
    ref, _, t = pair()
    res = summarize([compare_tokens(reference_rows(ref, t, 1e-3, 16), ref, t)], 120)
    assert res.kld.value == 0.0 and res.kld_max == 0.0
    assert res.same_top.value == 1.0
    assert res.ln_ppl_ratio.value == 0.0 and res.ln_ppl_ratio.err == 0.0
    assert res.ppl_ratio.value == 1.0 and res.ppl_ratio.err == 0.0
    assert res.ppl_diff.value == 0.0 and res.ppl_diff.err == 0.0
    assert res.rms_p_diff.value == 0.0


def mean_and_uncertainty(x: np.ndarray) -> tuple[float, float]:
    f = x.mean()
    var = (x * x).mean() - f * f
    return f, math.sqrt(var / (len(x) - 1))


def test_summary_statistics_follow_llama_perplexity_definitions() -> None:
    ref, q, t = pair(seed=5, noise=0.8)
    chunks = [compare_tokens(reference_rows(ref[i:i + 100], t[i:i + 100], 0.0, 120),
                             q[i:i + 100], t[i:i + 100]) for i in (0, 100, 200)]
    res = summarize(chunks, 120)
    assert res.exact and res.ref_tail_mass == 0.0
    kld = full_kld(ref, q)
    assert res.kld.value == pytest.approx(kld.mean(), rel=1e-6)
    assert res.kld.err == pytest.approx(mean_and_uncertainty(kld)[1], rel=1e-5)
    sorted_kld = np.sort(kld)
    assert res.kld_percentiles[0.99] == pytest.approx(
        np.interp(0.99 * 299, np.arange(300), sorted_kld), rel=1e-6)
    assert res.kld_median == pytest.approx(np.median(kld), rel=1e-6)

    def logp(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    nll_q = -logp(q)[np.arange(300), t]
    nll_p = -logp(ref)[np.arange(300), t]
    mq, eq = mean_and_uncertainty(nll_q)
    mp, ep = mean_and_uncertainty(nll_p)
    cov = ((nll_q * nll_p).mean() - mq * mp) / 299
    assert res.ppl.value == pytest.approx(math.exp(mq), rel=1e-7)
    assert res.ppl_ref.value == pytest.approx(math.exp(mp), rel=1e-7)
    assert res.ln_ppl_ratio.value == pytest.approx(mq - mp, rel=1e-7)
    # llama.cpp's var + var - 2 cov; ours, from the differences, equals it up to rounding
    assert res.ln_ppl_ratio.err == pytest.approx(math.sqrt(eq**2 + ep**2 - 2 * cov), rel=1e-6)
    pq, pp = math.exp(mq), math.exp(mp)
    assert res.ppl_diff.err == pytest.approx(
        math.sqrt((pq * eq) ** 2 + (pp * ep) ** 2 - 2 * pq * pp * cov), rel=1e-6)
    assert res.ln_ppl_cor == pytest.approx(np.corrcoef(nll_q, nll_p)[0, 1], rel=1e-2)
    dp = np.exp(-nll_q) - np.exp(-nll_p)
    assert res.p_diff.value == pytest.approx(dp.mean(), rel=1e-5)  # a difference of near-equals
    assert res.rms_p_diff.value == pytest.approx(math.sqrt((dp * dp).mean()), rel=1e-7)
    same = (q.argmax(1) == ref.argmax(1)).mean()
    assert res.same_top.value == pytest.approx(same)
    assert res.same_top.err == pytest.approx(math.sqrt(same * (1 - same) / 299))
    assert res.chunk_kld.shape == (3,)
    assert res.chunk_same_top.sum() == round(same * 300)


@pytest.mark.parametrize("tail_mass", [1e-1, 1e-3, 1e-6])
def test_kept_tokens_are_the_fewest_that_cover_all_but_the_tail_mass(tail_mass: float) -> None:
    ref, q, t = pair(seed=9)
    rows = reference_rows(ref, t, tail_mass=tail_mass, max_tokens=120)
    p = np.exp(ref.astype(np.float64) - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    sorted_p = -np.sort(-p, axis=1)
    need = (np.cumsum(sorted_p, axis=1) < 1 - tail_mass).sum(1) + 1
    # float32 logits: a token whose cumulative mass sits at the threshold may fall either side
    assert np.all(np.abs(np.diff(rows.offsets) - np.minimum(need, 120)) <= 1)
    # the tail is summed from float32 exp terms (as llama.cpp's softmax): ~1e-7 absolute rounding
    assert np.all(np.exp(rows.tail_logp) <= tail_mass + 2e-7)
    assert np.array_equal(rows.top1, ref.argmax(1))
    res = summarize([compare_tokens(rows, q, t)], 120)
    assert res.ref_tail_mass <= tail_mass
    assert res.kld.value <= full_kld(ref, q).mean() + 1e-9


@pytest.mark.parametrize(("tail_mass", "max_tokens"), [(1e-2, 120), (1e-4, 20), (0.0, 8), (1e-5, 120)])
@pytest.mark.parametrize("noise", [0.05, 0.5, 2.0])
def test_full_kld_lies_within_the_tail_bound(tail_mass: float, max_tokens: int,
                                             noise: float) -> None:
    # peaked rows, as a language model's, and noisy copies: the derived bound holds per token
    rng = np.random.default_rng(11)
    ref = (rng.standard_normal((200, 400)) * 5).astype(np.float32)
    q = (ref + noise * rng.standard_normal(ref.shape)).astype(np.float32)
    t = rng.integers(0, 400, 200).astype(np.int32)
    cmp = compare_tokens(reference_rows(ref, t, tail_mass, max_tokens), q, t)
    exact = full_kld(ref, q)
    slack = 1e-4 * exact + 1e-8  # float32 log-probabilities, as llama.cpp's, against float64
    assert np.all(cmp.kld <= exact + slack)
    assert np.all(exact <= cmp.kld + cmp.tail_bound + slack)
    assert np.all(cmp.tail_bound[cmp.ref_tail_mass == 0] == 0)
    res = summarize([cmp], 400)
    assert res.kld.value <= exact.mean() + slack.mean()
    assert exact.mean() <= res.kld.value + res.kld_tail_bound + slack.mean()


def test_full_vocabulary_has_no_tail_bound() -> None:
    ref, q, t = pair()
    res = summarize([compare_tokens(reference_rows(ref, t, 0.0, 120), q, t)], 120)
    assert res.exact and res.kld_tail_bound == 0.0


def naive_kept(logits: np.ndarray, tail_mass: float, max_tokens: int) -> list[list[int]]:
    """The kept tokens by a full sort of every row: by probability, ties to the lower id."""
    out = []
    for row in logits:
        shifted = row - row.max()
        lse = np.log(np.exp(shifted.astype(np.float64)).sum())
        order = np.lexsort((np.arange(len(row)), -shifted))[:max_tokens]
        covered = np.cumsum(np.exp(shifted[order].astype(np.float64) - lse))
        count = len(order) if tail_mass <= 0 else min(
            int((covered < 1 - tail_mass).sum()) + 1, len(order))
        out.append(order[:count].tolist())
    return out


@pytest.mark.parametrize(("tail_mass", "max_tokens"), [(1e-3, 5000), (1e-6, 300), (0.0, 77),
                                                       (1e-5, 5000)])
def test_kept_tokens_equal_a_full_sort_also_with_ties(tail_mass: float, max_tokens: int) -> None:
    # a vocabulary large enough for the sampled threshold, and logits rounded so many tie
    rng = np.random.default_rng(12)
    logits = np.round(rng.standard_normal((24, 5000)) * 3, 1).astype(np.float32)
    logits[3] = 0.0  # a flat row: every token ties
    rows = reference_rows(logits, np.zeros(24, dtype=np.int32), tail_mass, max_tokens)
    want = naive_kept(logits, tail_mass, max_tokens)
    for i, ids in enumerate(want):
        got = rows.ids[rows.offsets[i]:rows.offsets[i + 1]].tolist()
        assert got == sorted(got), i  # stored in id order
        assert abs(len(got) - len(ids)) <= 1, i  # the crossing token may fall either side
        n = min(len(got), len(ids))
        shorter, longer = (got, ids) if len(got) == n else (ids, got)
        assert set(shorter) <= set(longer), i
        if len(longer) > n:  # the one token more is the least probable of the longer set
            extra = (set(longer) - set(shorter)).pop()
            assert logits[i, extra] <= logits[i, list(shorter)].min(), i
