"""Statistical decisions for quality gates: pure NumPy and SciPy.

Every quantity is decided from per-chunk values. Tokens of one chunk share their context, so they
are not independent; chunks are (each is decoded from an empty cache on its own stretch of text).
Treating tokens as independent, as the ``±`` of llama.cpp does, understates uncertainty and makes
gates cry wolf.

Two gate semantics, for a quantity that must stay at or below a limit:

``detect`` (default)
    fail only when the data show, at level ``alpha``, that the quantity exceeds the limit
    (one-sided test of H0: value <= limit); otherwise pass.
``prove``
    pass only when the data show, at level ``alpha``, that the quantity is below the limit
    (non-inferiority: H0: value >= limit); fail when an exceedance is significant; otherwise
    inconclusive, with the number of chunks that would likely decide.

The interval reported is the two-sided ``1 - 2*alpha`` interval: its ends are the one-sided bounds
each mode tests against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _special() -> Any:
    """scipy.special, imported on first use (the plugin is loaded by every pytest run in the
    environment, including runs that check no model). The distributions below are the special
    functions scipy.stats evaluates for them; scipy.stats itself takes a second to import, about
    half of a run whose results all come from the result cache, so only the rank test of the
    speed checks loads it."""
    from scipy import special

    return special


def _t_cdf(t: float, df: float) -> float:
    return float(_special().stdtr(df, t))


def _t_sf(t: float, df: float) -> float:
    return float(_special().stdtr(df, -t))


def _t_ppf(q: float, df: float) -> float:
    return float(_special().stdtrit(df, q))


def _norm_cdf(x: float) -> float:
    return float(_special().ndtr(x))


def _norm_sf(x: float) -> float:
    return float(_special().ndtr(-x))


def _norm_ppf(q: float) -> float:
    return float(_special().ndtri(q))


PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Decision:
    verdict: str  # PASS, FAIL or INCONCLUSIVE
    estimate: float
    low: float  # 1 - 2*alpha interval
    high: float
    p_value: float  # of the test the mode decides on
    n: int  # chunks
    test: str
    more_needed: int | None = None  # prove mode, inconclusive: samples likely needed in all
    unit: str = "chunks"  # what ``n`` and ``more_needed`` count


def _decide(excess_p: float, within_p: float, alpha: float, mode: str) -> tuple[str, float]:
    """Verdict and the p-value reported, from the two one-sided p-values."""
    if mode == "detect":
        return (FAIL if excess_p < alpha else PASS), excess_p
    if within_p < alpha:
        return PASS, within_p
    return (FAIL if excess_p < alpha else INCONCLUSIVE), within_p


def mean_at_most(
    values: NDArray[np.float64], limit: float, alpha: float, mode: str, what: str
) -> Decision:
    """Is the mean of independent per-chunk ``values`` at most ``limit``? One-sample t-test."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError("need at least two chunks for a statistical decision")
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(n)
    t_crit = _t_ppf(1.0 - alpha, n - 1)
    if se == 0.0:
        excess_p = 0.0 if mean > limit else 1.0
        within_p = 0.0 if mean < limit else 1.0
    else:
        t = (mean - limit) / se
        excess_p = _t_sf(t, n - 1)
        within_p = _t_cdf(t, n - 1)
    verdict, p = _decide(excess_p, within_p, alpha, mode)
    more = None
    if verdict == INCONCLUSIVE and mean < limit:
        more = max(n + 1, math.ceil((t_crit * sd / (limit - mean)) ** 2))
    return Decision(verdict, mean, mean - t_crit * se, mean + t_crit * se, p, n,
                    f"one-sided t-test on {n} {what}", more)


def paired_mean_at_most(
    a: NDArray[np.float64], b: NDArray[np.float64], limit: float, alpha: float, mode: str,
    what: str,
) -> Decision:
    """Is the mean of ``a - b`` (paired by chunk) at most ``limit``? Paired t-test."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size} chunks")
    d = mean_at_most(a - b, limit, alpha, mode, what)
    return replace(d, test=f"paired {d.test}")


def macro_mean_at_most(
    samples: list[NDArray[np.float64]], limit: float, alpha: float, mode: str, what: str
) -> Decision:
    """Is the average over texts of each text's mean at most ``limit``? Each text weighs the
    same whatever its length. The estimate's variance is the sum of the texts' squared standard
    errors over T^2, referred to Student's t with Welch-Satterthwaite degrees of freedom (with
    one text, the one-sample t-test of :func:`mean_at_most`)."""
    xs = [np.asarray(x, dtype=np.float64) for x in samples]
    if not xs or any(x.size < 2 for x in xs):
        raise ValueError("need at least two chunks of every text for a statistical decision")
    t_count = len(xs)
    mean = float(np.mean([x.mean() for x in xs]))
    v = [float(x.var(ddof=1)) / x.size for x in xs]  # each text's squared standard error
    se = math.sqrt(sum(v)) / t_count
    n = sum(x.size for x in xs)
    if se == 0.0:
        excess_p = 0.0 if mean > limit else 1.0
        within_p = 0.0 if mean < limit else 1.0
        t_crit = 0.0
    else:
        df = sum(v) ** 2 / sum(vi * vi / (x.size - 1) for vi, x in zip(v, xs, strict=True)
                               if vi > 0)
        t = (mean - limit) / se
        excess_p, within_p = _t_sf(t, df), _t_cdf(t, df)
        t_crit = _t_ppf(1.0 - alpha, df)
    verdict, p = _decide(excess_p, within_p, alpha, mode)
    return Decision(verdict, mean, mean - t_crit * se, mean + t_crit * se, p, n,
                    f"macro-average t-test over {t_count} texts ({n} {what})")


def proportion_at_least(
    chunk_hits: NDArray[np.int64], per_chunk: int, limit: float, alpha: float, mode: str
) -> Decision:
    """Is the proportion of hits (e.g. same top token) at least ``limit``?

    A score test with a Wilson interval, on an effective sample size corrected for clustering:
    ``n_eff = N / deff`` with the design effect ``deff`` estimated from the variance of the chunk
    proportions (tokens of one chunk agree or disagree together more often than chance).
    """
    hits = np.asarray(chunk_hits, dtype=np.float64)
    m = hits.size
    if m < 2:
        raise ValueError("need at least two chunks for a statistical decision")
    total = m * per_chunk
    p_hat = float(hits.sum() / total)
    props = hits / per_chunk
    var_iid = p_hat * (1.0 - p_hat) / total
    var_cluster = float(props.var(ddof=1)) / m
    deff = max(1.0, var_cluster / var_iid) if var_iid > 0 else 1.0
    n_eff = max(float(m), total / deff)
    z = _norm_ppf(1.0 - alpha)
    centre = (p_hat + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z * math.sqrt(p_hat * (1 - p_hat) / n_eff + z * z / (4 * n_eff**2)) / (1 + z * z / n_eff)
    if 0.0 < limit < 1.0:
        score = (p_hat - limit) / math.sqrt(limit * (1 - limit) / n_eff)
        short_p = _norm_cdf(score)  # evidence the proportion is below the limit
        above_p = _norm_sf(score)
    else:
        short_p = 0.0 if p_hat < limit else 1.0
        above_p = 0.0 if p_hat > limit else 1.0
    verdict, p = _decide(short_p, above_p, alpha, mode)
    more = None
    if verdict == INCONCLUSIVE and p_hat > limit:
        need_eff = (z * math.sqrt(limit * (1 - limit)) / (p_hat - limit)) ** 2
        more = max(m + 1, math.ceil(need_eff * deff / per_chunk))
    return Decision(verdict, p_hat, centre - half, centre + half, p, m,
                    f"score test with Wilson interval on {total} tokens in {m} chunks"
                    f" (design effect {deff:.2f})", more)


def bootstrap_stat_at_most(
    chunks: list[NDArray[np.float64]], stat: float, limit: float, alpha: float, mode: str,
    resamples: int = 2000, seed: int = 0,
) -> Decision:
    """Is the ``stat`` quantile (e.g. 0.99) of per-token values at most ``limit``?

    Chunk bootstrap: resample whole chunks with replacement, recompute the quantile. The p-values
    are the bootstrap proportions on the far side of the limit.
    """
    m = len(chunks)
    if m < 2:
        raise ValueError("need at least two chunks for a statistical decision")
    data = np.stack([np.asarray(c, dtype=np.float64) for c in chunks])
    estimate = float(np.quantile(data, stat))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, m, size=(resamples, m))
    boot = np.array([np.quantile(data[row], stat) for row in picks])
    excess_p = float((np.sum(boot <= limit) + 1) / (resamples + 1))
    within_p = float((np.sum(boot >= limit) + 1) / (resamples + 1))
    verdict, p = _decide(excess_p, within_p, alpha, mode)
    low, high = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
    return Decision(verdict, estimate, low, high, p, m,
                    f"chunk bootstrap ({resamples} resamples of {m} chunks)")


# ---- throughput: per-repetition tokens/s samples ------------------------------------------------
#
# Throughput is compared on the log scale: timing noise is multiplicative, a tolerance is a ratio
# ("at least 90 % of the baseline"), and a ratio is a shift of logs, which both the t-test and the
# rank test handle exactly. The estimate and interval are of log(this / other).


def mean_interval(values: NDArray[np.float64], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean of independent ``values`` (two-sided, ``confidence``);
    ``(nan, nan)`` for fewer than two, where no spread is seen."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    half = _t_ppf(0.5 + confidence / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()) - half, float(x.mean()) + half


def mean_at_least(values: NDArray[np.float64], limit: float, alpha: float, mode: str,
                  what: str) -> Decision:
    """Is the mean of independent ``values`` (e.g. tokens/s per repetition) at least ``limit``?"""
    d = mean_at_most(-np.asarray(values, dtype=np.float64), -limit, alpha, mode, what)
    return replace(d, estimate=-d.estimate, low=-d.high, high=-d.low, unit="repetitions")


def min_rank_p(n1: int, n2: int) -> float:
    """The smallest one-sided p-value an exact Mann-Whitney U test of n1 and n2 samples can give."""
    return 1.0 / math.comb(n1 + n2, n1)


def _u_null_cdf(n1: int, n2: int) -> NDArray[np.float64]:
    """P(U <= u) for u = 0 .. n1*n2 under H0 (no ties): the coefficients of the Gaussian
    binomial [n1+n2 choose n1], by the recurrence on the largest observation."""
    # counts[i][j] = number of arrangements of i x's and j y's by U
    table: dict[tuple[int, int], NDArray[np.float64]] = {}
    for i in range(n1 + 1):
        for j in range(n2 + 1):
            if i == 0 or j == 0:
                table[i, j] = np.ones(1)
                continue
            # the largest value is an x (beats all j y's: U += j) or a y (adds nothing)
            with_x = np.concatenate([np.zeros(j), table[i - 1, j]])
            with_y = table[i, j - 1]
            size = max(with_x.size, with_y.size)
            table[i, j] = np.pad(with_x, (0, size - with_x.size)) + np.pad(
                with_y, (0, size - with_y.size))
    counts = table[n1, n2]
    cdf: NDArray[np.float64] = np.cumsum(counts) / counts.sum()
    return cdf


def ratio_at_least(
    x: NDArray[np.float64], y: NDArray[np.float64], ratio: float, alpha: float, mode: str,
    what: str = "tokens/s",
) -> Decision:
    """Is the typical value of samples ``x`` at least ``ratio`` times that of samples ``y``?

    Two independent samples (per-repetition tokens/s of two benchmark runs), compared on the log
    scale with the tolerance as a shift. The Mann-Whitney U test is used when the samples are
    large enough for it to reach significance at ``alpha`` (its smallest p-value is
    ``1 / C(n1+n2, n1)``): it ignores the odd repetition slowed by a context switch. Otherwise,
    Welch's t-test. Estimate and interval are of ``log(x / y)``: Hodges-Lehmann with the
    matching order-statistic interval for the rank test, difference of means for Welch.
    """
    lx = np.log(np.asarray(x, dtype=np.float64))
    ly = np.log(np.asarray(y, dtype=np.float64))
    n1, n2 = lx.size, ly.size
    if n1 < 2 or n2 < 2:
        raise ValueError("need at least two repetitions on each side for a statistical decision")
    margin = math.log(ratio)
    shifted = ly + margin
    samples = f"{n1} + {n2} log {what} samples"
    if min_rank_p(n1, n2) < alpha:
        pooled = np.concatenate([lx, shifted])
        exact = np.unique(pooled).size == pooled.size and n1 + n2 <= 60
        method = "exact" if exact else "asymptotic"
        rank_test = _scipy_stats().mannwhitneyu
        short_p = float(rank_test(lx, shifted, alternative="less", method=method).pvalue)
        within_p = float(rank_test(lx, shifted, alternative="greater", method=method).pvalue)
        diffs = np.sort((lx[:, None] - ly[None, :]).ravel())
        estimate = float(np.median(diffs))
        # The one-sided bounds are the k-th smallest and k-th largest pairwise differences,
        # k - 1 the largest U with P(U <= k - 1) <= alpha.
        if exact:
            k = int(np.searchsorted(_u_null_cdf(n1, n2), alpha, side="right"))
        else:
            z = _norm_ppf(1 - alpha)
            k = math.floor(n1 * n2 / 2 - z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12))
        k = min(max(k, 1), diffs.size)
        low, high = float(diffs[k - 1]), float(diffs[diffs.size - k])
        test = f"Mann-Whitney U test ({method}) on {samples}"
        sd = float(np.sqrt((lx.var(ddof=1) + ly.var(ddof=1)) / 2))
    else:
        vx, vy = lx.var(ddof=1) / n1, ly.var(ddof=1) / n2
        estimate = float(lx.mean() - ly.mean())
        se = math.sqrt(vx + vy)
        if se == 0.0:
            short_p = 0.0 if estimate < margin else 1.0
            within_p = 0.0 if estimate > margin else 1.0
            low = high = estimate
        else:
            df = (vx + vy) ** 2 / (vx**2 / (n1 - 1) + vy**2 / (n2 - 1))
            t = (estimate - margin) / se
            short_p, within_p = _t_cdf(t, df), _t_sf(t, df)
            t_crit = _t_ppf(1 - alpha, df)
            low, high = estimate - t_crit * se, estimate + t_crit * se
        test = f"Welch's t-test on {samples}"
        sd = float(np.sqrt((lx.var(ddof=1) + ly.var(ddof=1)) / 2))
    verdict, p = _decide(short_p, within_p, alpha, mode)
    more = None
    if verdict == INCONCLUSIVE and estimate > margin and sd > 0:
        z = _norm_ppf(1 - alpha)
        more = max(max(n1, n2) + 1, math.ceil(2 * (z * sd / (estimate - margin)) ** 2))
    return Decision(verdict, estimate, low, high, p, min(n1, n2), test, more, "repetitions")


MIN_BASELINE_RUNS = 3  # the between-run spread needs a few runs: 3 give its estimate 2 df


def run_ratio_at_least(
    x: NDArray[np.float64], runs: list[NDArray[np.float64]], ratio: float, alpha: float,
    mode: str, what: str = "tokens/s",
) -> Decision:
    """Is this run's typical value (samples ``x``) at least ``ratio`` times the baseline's,
    whose ``runs`` were recorded in separate processes?

    A two-level (random-effects) model on the log scale: a run's mean is the machine's level
    plus a run effect (drift between processes: placement in memory, clocks, neighbours) with
    variance tau^2, plus the mean of its repetitions' noise, variance sigma^2 / n. The baseline
    level is the mean of the J run means, whose sample variance s^2 estimates
    tau^2 + sigma^2 / n_b directly, so the between-run variance is in the error term:
    ``x_mean - level`` has variance ``tau^2 + sigma^2 / n_x + s^2 / J``, estimated with
    ``tau^2 = max(0, s^2 - sigma_w^2 / n_b)`` and the pooled within-run variance sigma_w^2, and
    is referred to Student's t with J - 1 degrees of freedom (a prediction interval for one more
    run; exact when n_x = n_b and effects are normal).
    """
    lx = np.log(np.asarray(x, dtype=np.float64))
    logs = [np.log(np.asarray(r, dtype=np.float64)) for r in runs]
    j = len(logs)
    if j < 2 or lx.size < 2 or any(r.size < 2 for r in logs):
        raise ValueError("need at least two baseline runs of two repetitions each")
    means = np.array([r.mean() for r in logs])
    level = float(means.mean())
    s2 = float(means.var(ddof=1))
    within = [r.var(ddof=1) for r in (*logs, lx)]
    dof = [r.size - 1 for r in (*logs, lx)]
    sigma2 = float(np.dot(within, dof) / sum(dof))
    n_b = float(np.mean([r.size for r in logs]))
    tau2 = max(0.0, s2 - sigma2 / n_b)
    se = math.sqrt(tau2 + sigma2 / lx.size + s2 / j)
    estimate = float(lx.mean()) - level
    margin = math.log(ratio)
    df = j - 1
    if se == 0.0:
        short_p = 0.0 if estimate < margin else 1.0
        within_p = 0.0 if estimate > margin else 1.0
        low = high = estimate
    else:
        t = (estimate - margin) / se
        short_p, within_p = _t_cdf(t, df), _t_sf(t, df)
        t_crit = _t_ppf(1 - alpha, df)
        low, high = estimate - t_crit * se, estimate + t_crit * se
    verdict, p = _decide(short_p, within_p, alpha, mode)
    test = (f"two-level t-test of this run against {j} baseline runs ({df} df; between-run sd"
            f" {math.sqrt(tau2):.1%}, within-run sd {math.sqrt(sigma2):.1%} of log {what})")
    more = None
    if verdict == INCONCLUSIVE and estimate > margin:
        more = j + 1  # a run more narrows the level; the run-to-run spread stays
    return Decision(verdict, estimate, low, high, p, j, test, more, "baseline runs")


# ---- task accuracy: one right-or-wrong answer per task -----------------------------------------
#
# Tasks are independent questions, so counts of right answers are binomial and the tests are
# exact binomial tests, with Clopper-Pearson intervals. Two models answering the same tasks are
# paired: what separates them is only the discordant tasks, right for one and wrong for the
# other (McNemar).


def _binomial_more(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return 1.0 if k <= 0 else float(_special().bdtrc(k - 1, n, p))


def _binomial_less(k: int, n: int, p: float) -> float:
    """P(X <= k)."""
    return float(_special().bdtr(k, n, p))


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """The one-sided ``1 - alpha`` bounds (together a ``1 - 2 alpha`` interval) of k / n."""
    inverse = _special().betaincinv  # the beta distribution's quantile function
    low = 0.0 if k == 0 else float(inverse(k, n - k + 1, alpha))
    high = 1.0 if k == n else float(inverse(k + 1, n - k, 1 - alpha))
    return low, high


def _binomial_more_needed(p_hat: float, limit: float, alpha: float) -> int:
    z = _norm_ppf(1 - alpha)
    return math.ceil(z * z * limit * (1 - limit) / (p_hat - limit) ** 2)


def rate_at_least(k: int, n: int, limit: float, alpha: float, mode: str, what: str) -> Decision:
    """Is the rate of ``k`` events (right answers) in ``n`` independent tasks at least
    ``limit``? Exact binomial test."""
    if n < 1:
        raise ValueError("need at least one task for a statistical decision")
    short_p = _binomial_less(k, n, limit)  # evidence the rate is below the limit
    above_p = _binomial_more(k, n, limit)
    verdict, p = _decide(short_p, above_p, alpha, mode)
    low, high = _clopper_pearson(k, n, alpha)
    more = None
    if verdict == INCONCLUSIVE and k / n > limit:
        more = max(n + 1, _binomial_more_needed(k / n, limit, alpha))
    return Decision(verdict, k / n, low, high, p, n, f"exact binomial test on {k} {what} in {n}"
                    " tasks", more, "tasks")


def rate_at_most(k: int, n: int, limit: float, alpha: float, mode: str, what: str) -> Decision:
    """Is the rate of ``k`` events (flipped answers) in ``n`` tasks at most ``limit``?"""
    d = rate_at_least(n - k, n, 1.0 - limit, alpha, mode, what)
    return replace(d, estimate=k / n, low=1.0 - d.high, high=1.0 - d.low,
                   test=f"exact binomial test on {k} {what} in {n} tasks")


def _tango_z(b: int, c: int, n: int, delta: float, shift: float = 0.0) -> float:
    """Tango's score statistic for H0: (b - c) / n = delta in a paired 2x2 table, b and c the
    discordant counts, with ``shift`` added to ``b - c`` (a continuity correction). The
    restricted maximum-likelihood estimate of c's cell probability enters the variance (Tango
    1998, Statistics in Medicine 17:891). At delta = 0 it is McNemar's (b - c) / sqrt(b + c)."""
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    q = (-b_ + math.sqrt(max(0.0, b_ * b_ - 4 * a_ * c_))) / (2 * a_)
    var = n * (2 * q + delta * (1 - delta))
    diff = b - c - n * delta + shift
    if var <= 0.0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(var)


# b - c moves in steps of one task: half a step of continuity correction keeps the score test's
# false alarms at or below alpha where the uncorrected test reaches 0.064 at alpha 0.05 (100
# tasks, 10 % discordant; tests/test_task_stats.py simulates the cells)
_CONTINUITY = 0.5


def _tango_bounds(b: int, c: int, n: int, alpha: float) -> tuple[float, float]:
    """The ``1 - 2 alpha`` score interval of (b - c) / n: the deltas the corrected one-sided
    tests keep."""
    z = _norm_ppf(1 - alpha)
    brentq = _optimize().brentq
    eps = 1e-12
    lo_end, hi_end, mid = -1.0 + eps, 1.0 - eps, (b - c) / n

    def low_z(d: float) -> float:
        return _tango_z(b, c, n, d, -_CONTINUITY) - z

    def high_z(d: float) -> float:
        return _tango_z(b, c, n, d, _CONTINUITY) + z

    low = lo_end if low_z(lo_end) <= 0 else (mid if low_z(mid) >= 0 else brentq(low_z, lo_end, mid))
    high = hi_end if high_z(hi_end) >= 0 else (mid if high_z(mid) <= 0 else brentq(high_z, mid, hi_end))
    return float(low), float(high)


def _scipy_stats() -> Any:
    from scipy import stats

    return stats


def _optimize() -> Any:
    from scipy import optimize

    return optimize


def paired_drop_at_most(lost: int, gained: int, n: int, margin: float, alpha: float,
                        mode: str) -> Decision:
    """Is the accuracy drop ``(lost - gained) / n`` at most ``margin``? ``lost``: tasks the
    reference answers right and this model wrong; ``gained``: the other way round.

    With no margin, the exact McNemar test: given the discordant tasks, ``lost`` is
    Binomial(lost + gained, 1/2) when neither model is better. With a margin, Tango's score
    test, which generalizes McNemar's statistic to a shifted null (an exact conditional test
    has no exact form there: the null depends on the unknown share of discordant tasks).
    """
    if n < 1:
        raise ValueError("need at least one task for a statistical decision")
    m = lost + gained
    if margin == 0.0:
        excess_p = _binomial_more(lost, m, 0.5) if m else 1.0
        within_p = _binomial_less(lost, m, 0.5) if m else 1.0
        test = f"exact McNemar test on {m} discordant of {n} tasks ({lost} lost, {gained} gained)"
    else:
        excess_p = _norm_sf(_tango_z(lost, gained, n, margin, -_CONTINUITY))
        within_p = _norm_cdf(_tango_z(lost, gained, n, margin, _CONTINUITY))
        test = (f"Tango's paired score test on {m} discordant of {n} tasks ({lost} lost,"
                f" {gained} gained)")
    verdict, p = _decide(excess_p, within_p, alpha, mode)
    low, high = _tango_bounds(lost, gained, n, alpha)
    estimate = (lost - gained) / n
    more = None
    if verdict == INCONCLUSIVE and estimate < margin:
        zc = _norm_ppf(1 - alpha)
        spread = max(m / n, 1.0 / n)  # variance of one task's difference ~ discordant share
        more = max(n + 1, math.ceil(zc * zc * spread / (margin - estimate) ** 2))
    return Decision(verdict, estimate, low, high, p, n, test, more, "tasks")


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
