"""The task tests against known results: scipy's binomial test, a direct maximum-likelihood fit,
and simulated false-alarm rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sp

from pytest_quantcheck import stats
from pytest_quantcheck.metrics.task_answers import pack_bits, unpack_bits, wilson


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (3, 0), (9, 2), (2, 9), (20, 20), (40, 25)])
def test_mcnemar_equals_binomtest_on_the_discordant_tasks(lost: int, gained: int) -> None:
    d = stats.paired_drop_at_most(lost, gained, 400, 0.0, 0.05, "detect")
    m = lost + gained
    expected = 1.0 if m == 0 else sp.binomtest(lost, m, 0.5, alternative="greater").pvalue
    assert d.p_value == pytest.approx(expected, rel=1e-12)
    assert d.verdict == ("fail" if expected < 0.05 else "pass")
    assert d.estimate == (lost - gained) / 400


def test_a_model_against_itself_passes_with_zero_flips() -> None:
    for margin, mode in ((0.0, "detect"), (0.02, "detect"), (0.02, "prove")):
        d = stats.paired_drop_at_most(0, 0, 300, margin, 0.05, mode)
        assert d.verdict == "pass" and d.estimate == 0.0
    flips = stats.rate_at_most(0, 300, 0.02, 0.05, "prove", "flips")
    assert flips.verdict == "pass" and flips.estimate == 0.0


def test_tango_restricted_mle_is_the_maximum_likelihood() -> None:
    """The variance uses the restricted MLE of the second discordant cell; a direct numerical
    maximisation of the trinomial likelihood under the null finds the same statistic."""
    b, c, n, delta = 30, 12, 400, 0.02

    def nll(q: float) -> float:
        return -(b * math.log(q + delta) + c * math.log(q) + (n - b - c) * math.log(1 - 2 * q - delta))

    q = optimize.minimize_scalar(nll, bounds=(1e-9, (1 - delta) / 2 - 1e-9), method="bounded",
                                 options={"xatol": 1e-12}).x
    expected = (b - c - n * delta) / math.sqrt(n * (2 * q + delta * (1 - delta)))
    assert stats._tango_z(b, c, n, delta) == pytest.approx(expected, rel=1e-5)
    assert stats._tango_z(b, c, n, 0.0) == pytest.approx((b - c) / math.sqrt(b + c))


def test_rate_tests_equal_scipy_binomtest() -> None:
    d = stats.rate_at_least(119, 400, 0.25, 0.05, "detect", "right answers")
    assert d.p_value == pytest.approx(sp.binomtest(119, 400, 0.25, alternative="less").pvalue)
    ci = sp.binomtest(119, 400).proportion_ci(confidence_level=0.90, method="exact")
    assert (d.low, d.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    f = stats.rate_at_most(30, 400, 0.05, 0.05, "detect", "flips")
    assert f.p_value == pytest.approx(sp.binomtest(30, 400, 0.05, alternative="greater").pvalue)
    assert f.verdict == "fail"


# Cells at the tolerance boundary: (tasks, discordant share, true drop = margin). False alarms:
# detect failing, or prove passing, when the drop is exactly the margin.
CELLS = [(400, 0.10, 0.02), (400, 0.20, 0.05), (200, 0.06, 0.02), (100, 0.10, 0.03),
         (1000, 0.03, 0.01), (400, 0.08, 0.0)]


@pytest.mark.parametrize(("n", "discordant", "drop"), CELLS)
def test_paired_test_false_alarms_stay_within_alpha(n: int, discordant: float, drop: float) -> None:
    runs, alpha = 2000, 0.05
    rng = np.random.default_rng(int(n * 1000 + discordant * 100))
    p_lost, p_gained = (discordant + drop) / 2, (discordant - drop) / 2
    counts = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], size=runs)
    detect = sum(stats.paired_drop_at_most(int(b), int(c), n, drop, alpha, "detect").verdict
                 == "fail" for b, c, _ in counts)
    prove = sum(stats.paired_drop_at_most(int(b), int(c), n, drop, alpha, "prove").verdict
                == "pass" for b, c, _ in counts)
    # at most alpha up to Monte Carlo error (3 standard errors of a rate alpha in 2000 runs)
    slack = 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert detect / runs <= alpha + slack
    if drop > 0:
        assert prove / runs <= alpha + slack


def test_paired_test_has_power() -> None:
    """A 6-point drop with 12 % discordant tasks among 400 is found almost always."""
    rng = np.random.default_rng(5)
    counts = rng.multinomial(400, [0.09, 0.03, 0.88], size=300)
    found = sum(stats.paired_drop_at_most(int(b), int(c), 400, 0.0, 0.05, "detect").verdict
                == "fail" for b, c, _ in counts)
    assert found / 300 > 0.9


def test_wilson_interval_is_llama_perplexitys() -> None:
    # llama-perplexity printed "400  29.75000000%  [25.4798%, 34.4055%]" for 119 of 400
    low, high = wilson(119, 400)
    assert (round(100 * low, 4), round(100 * high, 4)) == (25.4798, 34.4055)


def test_correctness_bits_round_trip() -> None:
    flags = np.random.default_rng(0).random(1001) < 0.4
    assert (unpack_bits(pack_bits(flags), 1001) == flags).all()
    with pytest.raises(ValueError):
        unpack_bits(pack_bits(flags), 2000)
