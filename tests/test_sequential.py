"""Sequential decisions: the look schedule, alpha spending, error rates under optional stopping
(simulated with the very procedure the plugin runs), and the plugin end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_quantcheck import stats
from pytest_quantcheck.sequential import decide, look_alphas, look_schedule


def test_looks_double_and_end_at_every_chunk() -> None:
    assert look_schedule(142, 8, 4) == [8, 16, 32, 64, 142]
    assert look_schedule(193, 4) == [4, 8, 16, 32, 64, 193]
    assert look_schedule(137, 6, 4) == [8, 16, 32, 64, 137]  # whole groups of 4
    assert look_schedule(10, 8) == [10]  # too short to look early
    looks = look_schedule(500, 8)
    alphas = look_alphas(looks, 0.05)
    assert math.isclose(sum(alphas), 0.05) and looks[-2] <= 250
    assert alphas[-1] >= 0.025  # the last look keeps at least half


def _sequential_verdicts(diffs: np.ndarray, margin: float, mode: str,
                         min_chunks: int = 8) -> tuple[str, int]:
    looks = look_schedule(diffs.size, min_chunks)

    def evaluate(n: int, level: float, m: str) -> stats.Decision:
        return stats.mean_at_most(diffs[:n], margin, level, m, "chunk differences")

    outcome, i = decide(looks, look_alphas(looks, 0.05), mode, evaluate)
    return outcome.verdict, looks[i]


@pytest.mark.parametrize("mode", ["detect", "prove"])
def test_false_alarms_stay_within_alpha_under_optional_stopping(mode: str) -> None:
    """At the tolerance boundary (the true mean equal to the margin) a detect run must not fail
    and a prove run must not pass more often than alpha, whatever look stops it."""
    rng = np.random.default_rng(7 if mode == "detect" else 8)
    runs, margin = 2000, math.log1p(0.03)
    alarms = 0
    for _ in range(runs):
        diffs = rng.normal(margin, 0.02, size=64)
        verdict, _n = _sequential_verdicts(diffs, margin, mode)
        alarms += verdict == (stats.FAIL if mode == "detect" else stats.PASS)
    slack = 3 * math.sqrt(0.05 * 0.95 / runs)  # three Monte Carlo standard errors
    assert alarms / runs <= 0.05 + slack


@pytest.mark.parametrize("mode", ["detect", "prove"])
def test_task_looks_keep_false_alarms_within_alpha(mode: str) -> None:
    """Task checks in looks of 100, 200 and 400 tasks (exact binomial tests at the spent
    levels): at an accuracy equal to the limit, detect must not fail and prove must not pass
    more often than alpha."""
    rng = np.random.default_rng(17 if mode == "detect" else 18)
    runs, limit = 2000, 0.6
    looks = look_schedule(400, 100)
    assert looks == [100, 200, 400]
    alarms = 0
    for _ in range(runs):
        right = rng.random(400) < limit

        def evaluate(n: int, level: float, m: str,
                     right: np.ndarray = right) -> stats.Decision:
            return stats.rate_at_least(int(right[:n].sum()), n, limit, level, m, "right answers")

        outcome, _i = decide(looks, look_alphas(looks, 0.05), mode, evaluate)
        alarms += outcome.verdict == (stats.FAIL if mode == "detect" else stats.PASS)
    slack = 3 * math.sqrt(0.05 * 0.95 / runs)
    assert alarms / runs <= 0.05 + slack


def test_clear_cases_stop_at_the_first_look_and_agree_with_the_full_test() -> None:
    rng = np.random.default_rng(3)
    margin = math.log1p(0.03)
    near = rng.normal(0.0, 0.003, size=128)  # Q8_0-like: far inside the tolerance
    far = rng.normal(math.log1p(0.09), 0.02, size=128)  # Q2_K-like: far beyond it
    for diffs, expected in ((near, stats.PASS), (far, stats.FAIL)):
        verdict, used = _sequential_verdicts(diffs, margin, "detect")
        fixed = stats.mean_at_most(diffs, margin, 0.05, "detect", "x").verdict
        assert (verdict, used) == (expected, 8) and fixed == expected


SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=3)
@pytest.mark.kl_divergence_at_most(0.05)
def test_gate(quant_model):
    pass
"""


def test_plugin_stops_early_and_reuses_results(qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile(SUITE)
    fixed = qc_project.runpytest("--quant-sequential", "false", "--quant-json", "fixed.json",
                                 "--quant-result-cache", "false")
    looked = qc_project.runpytest("--quant-json", "looked.json")
    assert fixed.parseoutcomes() == looked.parseoutcomes()
    verdicts = [{(c["variant"], c["check"]): c["verdict"] for c in
                 json.loads((qc_project.path / name).read_text())["checks"]}
                for name in ("fixed.json", "looked.json")]
    assert verdicts[0] == verdicts[1]
    data = json.loads((qc_project.path / "looked.json").read_text())
    models = data["models"]
    total = models["base"]["chunks_used"]
    assert 0 < models["Q2_K"]["chunks_decoded"] < total  # Q2_K fails early
    assert all("sequential: decided after" in c["message"] for c in data["checks"])
    # a second run with nothing changed decodes nothing and says where results came from
    again = qc_project.runpytest("--quant-json", "again.json")
    again.stdout.fnmatch_lines(["quantcheck: results from the cache: *Q2_K (*"])
    rows = json.loads((qc_project.path / "again.json").read_text())["models"]
    assert all(row["chunks_decoded"] == 0 for row in rows.values())


def test_a_helper_is_decided_in_looks_like_the_marker(qc_project: pytest.Pytester) -> None:
    """An assertion helper on a fixture's model goes through the run's decider: it stops at the
    look the marker with the same arguments stops at, with the same note, and decodes no more."""
    qc_project.makepyfile(
        """
        import pytest
        from pytest_quantcheck.assertions import assert_perplexity_within

        @pytest.mark.perplexity_within(pct=3, of="base")
        def test_marker(quant_model):
            pass

        def test_helper(quantize):
            assert_perplexity_within(quantize("Q2_K"), quantize("base"), pct=3)
        """
    )
    runs = {}
    for name, chosen in (("marker", "test_marker"), ("helper", "test_helper")):
        qc_project.runpytest("-k", chosen, "--quant-variants", "Q2_K", "--quant-json", f"{name}.json",
                             "--quant-result-cache", "false")
        runs[name] = json.loads((qc_project.path / f"{name}.json").read_text())
    (marker,), (helper,) = runs["marker"]["checks"], runs["helper"]["checks"]
    assert "sequential: decided after" in helper["message"], helper["message"]
    assert helper["verdict"] == marker["verdict"]
    assert helper["message"].split(" FAIL ")[1] == marker["message"].split(" FAIL ")[1]
    decoded = {name: run["models"]["Q2_K"]["chunks_decoded"] for name, run in runs.items()}
    assert 0 < decoded["helper"] <= decoded["marker"] < helper["n_available"], decoded
