"""Assertion helpers inside existing tests, and Holm correction across a run."""

from __future__ import annotations

import pytest

from conftest import RunBothWays


def test_helpers_fail_with_the_markers_message(qc_project: pytest.Pytester,
                                               run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(
        """
        import pytest
        from pytest_quantcheck.assertions import (
            assert_kl_divergence_at_most, assert_perplexity_at_most, assert_perplexity_within,
            assert_size_at_most, assert_top1_agreement_at_least,
        )

        def test_existing(quantize, quant_reference):
            q8 = quantize("Q8_0")
            outcome = assert_perplexity_within(q8, pct=1)
            assert outcome.passed and outcome.measured > 1
            assert_perplexity_at_most(q8, 100)
            assert_kl_divergence_at_most(q8, 0.1)
            assert_top1_agreement_at_least(q8, 0.5)
            assert_size_at_most(q8, bpw=64)
            assert_perplexity_within(quantize("Q2_K"), q8, pct=3)

        def test_bad_argument(quantize):
            assert_perplexity_within(quantize("Q8_0"), pct=-1)
        """
    )
    result = run_both_ways(qc_project)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "AssertionError: perplexity_within(pct=3, of='Q8_0') FAIL for Q2_K: PPL" in out
    assert "vs " in out and "(Q8_0)" in out
    assert "pct must be >= 0.0, got -1" in out
    assert "site-packages" not in out.split("short test summary")[0]
    assert "registry.py" not in out and "assertions.py:" not in out  # no plugin frames
    # the helpers' outcomes reach the summary table like the markers' (in both ways of running)
    summary = out.split("quantcheck summary")[1].split("short test summary")[0]
    assert "Q2_K     perplexity_within(pct=3, of='Q8_0')" in summary
    assert summary.count("PASS") == 5 and summary.count("FAIL") == 1


def test_holm_correction_is_applied_across_the_run(qc_project: pytest.Pytester,
                                                   run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=3)
        @pytest.mark.perplexity_at_most(1000)
        def test_q(quant_model):
            pass
        """
    )
    result = run_both_ways(qc_project, "--quant-correction", "holm")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*perplexity_within(pct=3) FAIL for Q2_K*p = *(Holm-adjusted *)*"])
    # every model is evaluated once in the whole run, under xdist too (the worker that claims a
    # variant evaluates it and shares its outcomes); the base at most once per process
    loads = [x for x in (qc_project.path / "backend.log").read_text().splitlines()
             if x.startswith("load")]
    variant_loads = [x for x in loads if x != "load base.gguf"]
    assert len(variant_loads) == len(set(variant_loads)) == 2, loads


def test_holm_can_turn_borderline_failures_into_passes() -> None:
    from pytest_quantcheck import stats
    from pytest_quantcheck.checks import Outcome, apply_holm

    def outcome(p: float) -> Outcome:
        d = stats.Decision(stats.FAIL, 0.1, 0.0, 0.2, p, 30, "t")
        return Outcome("c", "Q", "PPL", stats.FAIL, 1.0, 1.0, 0.0, "+1%", d, "detect", 0.05)

    adjusted = apply_holm([outcome(0.03), outcome(0.04)])
    assert [o.verdict for o in adjusted] == [stats.PASS, stats.PASS]
    assert [o.p_adjusted for o in adjusted] == pytest.approx([0.06, 0.06])
