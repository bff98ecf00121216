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
    assert d.more_needed is not None and d.more_needed > 6


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


# ---- throughput: two independent samples of tokens/s -------------------------------------------


def test_welch_on_logs_matches_scipy_when_samples_are_few() -> None:
    rng = np.random.default_rng(11)
    x, y = np.exp(rng.normal(5.0, 0.02, 3)), np.exp(rng.normal(5.05, 0.02, 3))
    assert stats.min_rank_p(3, 3) >= 0.05  # a rank test could never reject: Welch
    d = stats.ratio_at_least(x, y, 0.97, 0.05, "detect")
    want = sps.ttest_ind(np.log(x), np.log(y) + math.log(0.97), equal_var=False,
                         alternative="less")
    assert d.test.startswith("Welch's t-test")
    assert d.p_value == pytest.approx(want.pvalue, rel=1e-9)
    ci = sps.ttest_ind(np.log(x), np.log(y), equal_var=False).confidence_interval(0.90)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert d.estimate == pytest.approx(np.log(x).mean() - np.log(y).mean())


def test_mann_whitney_when_samples_can_reach_significance() -> None:
    rng = np.random.default_rng(12)
    x, y = np.exp(rng.normal(5.0, 0.02, 5)), np.exp(rng.normal(5.2, 0.02, 6))
    assert stats.min_rank_p(5, 6) < 0.05
    d = stats.ratio_at_least(x, y, 0.9, 0.05, "detect")
    want = sps.mannwhitneyu(np.log(x), np.log(y) + math.log(0.9), alternative="less",
                            method="exact")
    assert d.test.startswith("Mann-Whitney U test (exact)")
    assert d.p_value == pytest.approx(want.pvalue, rel=1e-12)
    assert d.verdict == stats.FAIL  # about 18 % slower, tolerance 10 %
    diffs = np.log(x)[:, None] - np.log(y)[None, :]
    assert d.estimate == pytest.approx(np.median(diffs))


def test_exact_null_distribution_of_u_is_scipys() -> None:
    rng = np.random.default_rng(13)
    for n1, n2 in ((4, 4), (5, 7), (8, 3)):
        cdf = stats._u_null_cdf(n1, n2)
        for _ in range(5):
            x, y = rng.normal(size=n1), rng.normal(size=n2)
            res = sps.mannwhitneyu(x, y, alternative="less", method="exact")
            assert cdf[int(res.statistic)] == pytest.approx(res.pvalue, rel=1e-12)


def test_rank_interval_is_the_textbook_one_for_five_and_five() -> None:
    # n1 = n2 = 5 at 90 %: the 5th smallest and 5th largest of the 25 pairwise differences
    x = np.exp(np.array([1.0, 2.0, 3.0, 4.0, 5.0]) / 100)
    y = np.exp(np.array([1.5, 2.5, 3.5, 6.0, 7.0]) / 100)
    d = stats.ratio_at_least(x, y, 1.0, 0.05, "detect")
    diffs = np.sort((np.log(x)[:, None] - np.log(y)[None, :]).ravel())
    assert (d.low, d.high) == pytest.approx((diffs[4], diffs[20]))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_same_speed_false_alarms_stay_at_alpha(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    trials = 2000
    alarms = 0
    covered = 0
    for _ in range(trials):
        x = 200 * np.exp(rng.normal(0, 0.03, n))
        y = 200 * np.exp(rng.normal(0, 0.03, n))
        d = stats.ratio_at_least(x, y, 1.0, 0.05, "detect")
        alarms += d.verdict == stats.FAIL
        covered += d.low <= 0.0
    # at the tolerance's edge the rate is alpha at most (binomial 3-sigma allowance)
    assert alarms / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert covered / trials >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / trials)


def test_prove_mode_for_speed_says_how_many_repetitions() -> None:
    rng = np.random.default_rng(16)  # about 1.4 % faster: inside -3 %, not provably with 4 + 4
    x, y = np.exp(rng.normal(5.0, 0.05, 4)), np.exp(rng.normal(5.0, 0.05, 4))
    d = stats.ratio_at_least(x, y, 0.97, 0.05, "prove")
    assert d.verdict == stats.INCONCLUSIVE
    assert d.unit == "repetitions" and d.more_needed is not None and d.more_needed > 4


def test_absolute_speed_is_a_one_sample_t_test() -> None:
    x = np.array([101.0, 99.0, 103.0, 98.0, 100.0])
    d = stats.mean_at_least(x, 105.0, 0.05, "detect", "r")
    assert d.p_value == pytest.approx(sps.ttest_1samp(x, 105.0, alternative="less").pvalue)
    assert d.verdict == stats.FAIL and d.estimate == pytest.approx(100.2) and d.low < d.high


def simulated_runs(rng: np.random.Generator, n_runs: int, tau: float, sigma: float,
                   n: int = 5, speed: float = 100.0) -> list[np.ndarray]:
    return [speed * np.exp(rng.normal(rng.normal(0, tau), sigma, n)) for _ in range(n_runs)]


@pytest.mark.parametrize(("j", "tau"), [(3, 0.08), (5, 0.08), (10, 0.0), (3, 0.0)])
def test_two_level_false_alarms_stay_at_alpha_when_runs_drift(j: int, tau: float) -> None:
    # A/A across separate runs: the baseline's j runs and this run share the machine's level,
    # each run drifting by tau (8% as measured between processes here), 5 repetitions of 5%.
    rng = np.random.default_rng(j)
    trials, alarms = 4000, 0
    for _ in range(trials):
        *baseline, current = simulated_runs(rng, j + 1, tau, 0.05)
        alarms += stats.run_ratio_at_least(current, baseline, 1.0, 0.05, "detect").verdict == stats.FAIL
    rate = alarms / trials
    # within three Monte Carlo standard errors of alpha (tau = 0: the test is conservative)
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials), rate


def test_the_within_run_test_raises_false_alarms_when_runs_drift() -> None:
    # Why the two-level test exists: repetitions of one run miss the drift between runs.
    rng = np.random.default_rng(1)
    alarms = sum(stats.ratio_at_least(x, y, 1.0, 0.05, "detect").verdict == stats.FAIL
                 for x, y in (simulated_runs(rng, 2, 0.08, 0.05) for _ in range(1000)))
    assert alarms / 1000 > 0.15


def test_two_level_test_catches_a_real_slowdown() -> None:
    rng = np.random.default_rng(2)
    caught = 0
    for _ in range(500):
        baseline = simulated_runs(rng, 10, 0.08, 0.05)
        current = simulated_runs(rng, 1, 0.08, 0.05, speed=55.0)[0]  # 1 thread of 2: -45%
        caught += stats.run_ratio_at_least(current, baseline, 1.0, 0.05, "detect").verdict == stats.FAIL
    assert caught / 500 > 0.95


def test_two_level_test_matches_a_prediction_interval_when_runs_are_alike() -> None:
    # equal repetition counts: (x - level) / (s * sqrt(1 + 1/J)) with J - 1 df
    rng = np.random.default_rng(3)
    runs = simulated_runs(rng, 4, 0.1, 0.01)
    *baseline, current = runs
    means = np.array([np.log(r).mean() for r in baseline])
    s = means.std(ddof=1)
    within = np.mean([np.log(r).var(ddof=1) for r in runs])
    tau2 = max(0.0, s**2 - within / 5)
    se = math.sqrt(tau2 + within / 5 + s**2 / 3)
    t = (np.log(current).mean() - means.mean()) / se
    d = stats.run_ratio_at_least(current, baseline, 1.0, 0.05, "detect")
    assert d.p_value == pytest.approx(sps.t.cdf(t, 2), rel=1e-9)
    assert d.n == 3 and "3 baseline runs (2 df" in d.test


@pytest.mark.parametrize("df", [1, 3, 7.5, 40, 1000])
def test_special_function_distributions_are_scipy_stats(df: float) -> None:
    # the plugin evaluates t, normal, binomial and beta through scipy.special (scipy.stats takes
    # a second to import); each must be the distribution scipy.stats gives, to rounding
    for x in (-4.0, -1.3, 0.0, 0.7, 2.5):
        assert stats._t_cdf(x, df) == pytest.approx(sps.t.cdf(x, df), rel=1e-12, abs=1e-300)
        assert stats._t_sf(x, df) == pytest.approx(sps.t.sf(x, df), rel=1e-12, abs=1e-300)
        assert stats._norm_cdf(x) == pytest.approx(sps.norm.cdf(x), rel=1e-12)
        assert stats._norm_sf(x) == pytest.approx(sps.norm.sf(x), rel=1e-12)
    for q in (0.001, 0.025, 0.5, 0.95, 0.999):
        assert stats._t_ppf(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-10)
        assert stats._norm_ppf(q) == pytest.approx(sps.norm.ppf(q), rel=1e-12)
    n = int(min(df, 200)) + 5
    for k in range(n + 1):
        assert stats._binomial_less(k, n, 0.3) == pytest.approx(sps.binom.cdf(k, n, 0.3),
                                                                rel=1e-9, abs=1e-300)
        assert stats._binomial_more(k, n, 0.3) == pytest.approx(sps.binom.sf(k - 1, n, 0.3),
                                                                rel=1e-9, abs=1e-300)
        low, high = stats._clopper_pearson(k, n, 0.05)
        assert low == (0.0 if k == 0 else pytest.approx(sps.beta.ppf(0.05, k, n - k + 1)))
        assert high == (1.0 if k == n else pytest.approx(sps.beta.ppf(0.95, k + 1, n - k)))
