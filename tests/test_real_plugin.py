"""The plugin as a new user tries it: a fresh project pointing at a real GGUF model (the built-in
model, built into the cache, outside the project)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.real


@pytest.fixture
def project(pytester: pytest.Pytester, demo_model: Path, demo_text: Path) -> pytest.Pytester:
    pytester.makepyprojecttoml(
        f'[tool.quantcheck]\nmodel = "{demo_model}"\neval_text = "{demo_text}"\n'
        'variants = ["Q5_K_M", "Q4_K_M"]\nn_ctx = 256\n'
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=3)
        @pytest.mark.perplexity_within(pct=1, of="baseline")
        def test_release(quant_model):
            pass
        """
    )
    return pytester


# Serial only: a -n 2 run of the real model costs three more llama.cpp processes; the plugin's
# xdist path is the same for every backend and runs both ways on the fake one (run_both_ways).
def test_a_few_percent_passes_and_a_big_regression_fails(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*perplexity_within(pct=3) FAIL for Q4_K_M: PPL 96.36 vs 80.67 (base (reference)),"
        " +19.4*%; 90% CI +*% to +*%; tolerance +3%; paired one-sided t-test on 142 chunk mean NLL"
        " differences, p = *, mode detect, alpha 0.05*",
        "*Q5_K_M*perplexity_within(pct=3)*82.69*80.67*+2.50%*PASS*",
    ])


def test_baseline_round_trip_and_a_mismatch(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--quant-update-baseline", "-k", "Q5_K_M")
    result.assert_outcomes(passed=1)
    assert (project.path / "baselines" / "quantcheck-demo-f32.quantcheck.json").exists()
    project.runpytest_subprocess("--quant-baseline", "-k", "Q5_K_M").assert_outcomes(passed=1)
    result = project.runpytest_subprocess("--quant-baseline", "-k", "Q5_K_M",
                                          "--quant-n-ctx", "128")
    result.assert_outcomes(failed=1)
    # the same tokens cut differently: the first key that differs is n_ctx
    result.stdout.fnmatch_lines(["*quantcheck.json: baseline was made with a different n_ctx"
                                 " (256, now 128); refresh it with --quant-update-baseline*"])
