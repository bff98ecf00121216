"""Quality checks written as ordinary tests with the assertion helpers.

The helpers take the fixtures' models and fail with the same message as the markers. The
``quantize`` fixture builds any variant on the fly (cached by content), so a test can compare
recipes directly.
"""

import pytest

from pytest_quantcheck.assertions import (
    assert_kl_divergence_at_most,
    assert_perplexity_at_most,
    assert_perplexity_within,
    assert_size_at_most,
    assert_top1_agreement_at_least,
)


def test_reference_is_sane(quant_reference):
    assert_perplexity_at_most(quant_reference, 200)


@pytest.mark.parametrize("recipe", ["Q6_K", "Q5_K_M"])
def test_candidate_recipes(quantize, recipe):
    model = quantize(recipe)
    assert_size_at_most(model, bpw=7)
    assert_perplexity_within(model, pct=5)  # against the reference (the base model)
    assert_kl_divergence_at_most(model, 0.1)


def test_k_quant_beats_legacy_at_similar_size(quantize):
    # Q4_K_M against Q4_0: is the newer recipe at least as good?
    assert_perplexity_within(quantize("Q4_K_M"), quantize("Q4_0"), pct=0)


def test_prove_mode_for_the_release_candidate(quantize):
    # prove: pass only when the 95% bound is inside the tolerance, not merely "no evidence of harm"
    assert_perplexity_within(quantize("Q8_0"), pct=1, mode="prove")
    assert_top1_agreement_at_least(quantize("Q8_0"), 0.95, mode="prove")
