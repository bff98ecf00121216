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


def expected_ppl(demo_model: Path, demo_text: Path, real_cache: Path, spec: str) -> float:
    """The perplexity the plugin must report, computed here by the engine itself: the demo
    model and llama.cpp's kernels differ between CPUs (AVX2, AVX-512, ...), so the last digits
    of a perplexity are the machine's, never a number to pin."""
    from pytest_quantcheck.engine import Engine
    from pytest_quantcheck.evaluation import ScoringProtocol
    from pytest_quantcheck.variants import quantize

    engine = Engine.default(cache_dir=real_cache)
    path = demo_model if spec == "base" else quantize(
        demo_model, spec, backend=engine.backend, cache_dir=real_cache).path
    return engine.perplexity(path, demo_text, ScoringProtocol(n_ctx=256, n_batch=2048)).ppl


# Serial only: a -n 2 run of the real model costs three more llama.cpp processes; the plugin's
# xdist path is the same for every backend and runs both ways on the fake one (run_both_ways).
def test_a_few_percent_passes_and_a_big_regression_fails(
        project: pytest.Pytester, demo_model: Path, demo_text: Path, real_cache: Path) -> None:
    result = project.runpytest_subprocess("--quant-sequential", "false")  # every chunk
    result.assert_outcomes(passed=1, failed=1)
    base, q4, q5 = (expected_ppl(demo_model, demo_text, real_cache, spec)
                    for spec in ("base", "Q4_K_M", "Q5_K_M"))
    # Q4_K_M is about +19% on the demo model and Q5_K_M about +2.5%, on every CPU seen so far:
    # far enough from the 3% tolerance that the verdicts themselves are not machine-dependent.
    result.stdout.fnmatch_lines([
        f"*perplexity_within(pct=3) FAIL for Q4_K_M: PPL {q4:.4g} vs {base:.4g} (base (reference)),"
        f" {q4 / base - 1:+.2%} over 142 chunks; 90% CI +*% to +*%; tolerance +3%; paired"
        " one-sided t-test on 142"
        " chunk mean NLL differences, p = *, mode detect, alpha 0.05*",
        f"*Q5_K_M*perplexity_within(pct=3)*{q5:.4g}*{base:.4g}*{q5 / base - 1:+.2%}*PASS*",
    ])
    # sequentially (the default), the same verdicts; +19% is settled long before the last look
    looked = project.runpytest_subprocess()
    looked.assert_outcomes(passed=1, failed=1)
    looked.stdout.fnmatch_lines(["*perplexity_within(pct=3) FAIL for Q4_K_M: PPL *; sequential:"
                                 " decided after * of 142 chunks (look [1-4] of 5;*"])


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
