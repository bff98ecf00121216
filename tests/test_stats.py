"""Decisions checked against SciPy's own tests and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pytest_quantcheck import stats


def test_paired_test_matches_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(2.0, 0.3, 40)
    q = ref + rng.normal(0.02, 0.01, 40)
    d = stats.paired_mean_at_most(q, ref, 0.0, 0.05, "detect", "x")
    want = sps.ttest_rel(q, ref, alternative="greater")
    assert d.p_value == pytest.approx(want.pvalue, rel=1e-9)
    assert d.verdict == stats.FAIL
    # the interval ends are scipy's one-sided 95% bounds
    ci = sps.ttest_rel(q, ref).confidence_interval(0.90)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_tolerance_shifts_the_null() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0.02, 0.01, 50)
    d = stats.mean_at_most(x, 0.03, 0.05, "detect", "x")
    want = sps.ttest_1samp(x, 0.03, alternative="greater").pvalue
    assert d.p_value == pytest.approx(want, rel=1e-9)
    assert d.verdict == stats.PASS
    proved = stats.mean_at_most(x, 0.03, 0.05, "prove", "x")
    assert proved.p_value == pytest.approx(sps.ttest_1samp(x, 0.03, alternative="less").pvalue)
    assert proved.verdict == stats.PASS


def test_prove_is_inconclusive_with_too_few_chunks_and_says_how_many() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.02, 0.03, 6)
    d = stats.mean_at_most(x, 0.03, 0.05, "prove", "x")
    assert d.verdict == stats.INCONCLUSIVE
    assert d.more_chunks is not None and d.more_chunks > 6


def test_false_alarm_rate_of_same_model_comparisons_is_at_most_alpha() -> None:
    """1,000 simulated A/A comparisons: the same model scored twice with evaluation noise."""
    rng = np.random.default_rng(4)
    alarms = 0
    trials = 1000
    for _ in range(trials):
        chunk_nll = rng.normal(2.3, 0.25, 64)  # chunks differ a lot from one another
        a = chunk_nll + rng.normal(0, 0.004, 64)  # run-to-run noise of each model
        b = chunk_nll + rng.normal(0, 0.004, 64)
        d = stats.paired_mean_at_most(a, b, 0.0, 0.05, "detect", "x")
        alarms += d.verdict == stats.FAIL
    # binomial(1000, 0.05): mean 50, sd 6.9; allow three sd above alpha
    assert alarms / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_power_to_detect_a_real_increase() -> None:
    """A 2% perplexity increase against a 0% tolerance, 64 chunks, chunk-level noise of a
    real quantization (sd of the per-chunk log-ratio 0.02): detected nearly always."""
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(500):
        d_chunks = rng.normal(math.log(1.02), 0.02, 64)
        d = stats.mean_at_most(d_chunks, 0.0, 0.05, "detect", "x")
        hits += d.verdict == stats.FAIL
    assert hits / 500 > 0.99


def test_holm_matches_the_textbook_example() -> None:
    # p-values 0.01, 0.04, 0.03, 0.005 -> Holm: 0.03, 0.06, 0.06, 0.02
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_wilson_interval_without_clustering_matches_the_formula() -> None:
    hits = np.full(50, 90)  # identical chunks: no extra variance, design effect 1
    d = stats.proportion_at_least(hits, 100, 0.85, 0.05, "detect")
    n, p, z = 5000, 0.9, sps.norm.ppf(0.95)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (d.low, d.high) == pytest.approx((centre - half, centre + half))
    assert d.verdict == stats.PASS and "design effect 1.00" in d.test


def test_clustered_agreement_widens_the_interval() -> None:
    rng = np.random.default_rng(6)
    hits = rng.binomial(100, rng.uniform(0.6, 1.0, 50))  # chunks differ in difficulty
    d = stats.proportion_at_least(hits, 100, 0.5, 0.05, "detect")
    iid = stats.proportion_at_least(np.full(50, hits.sum() // 50), 100, 0.5, 0.05, "detect")
    assert d.high - d.low > 1.5 * (iid.high - iid.low)


def test_bootstrap_quantile_decides_both_ways() -> None:
    rng = np.random.default_rng(7)
    chunks = [rng.exponential(0.05, 100) for _ in range(40)]
    p99 = float(np.quantile(np.concatenate(chunks), 0.99))
    assert stats.bootstrap_stat_at_most(chunks, 0.99, p99 * 2, 0.05, "detect").verdict == stats.PASS
    assert stats.bootstrap_stat_at_most(chunks, 0.99, p99 / 2, 0.05, "detect").verdict == stats.FAIL


def test_too_few_chunks_is_refused() -> None:
    with pytest.raises(ValueError, match="at least two chunks"):
        stats.mean_at_most(np.array([1.0]), 1.0, 0.05, "detect", "x")
