"""Gates for variants given by path next to variants built from file types, and a recipe built
inside a test with the ``quantize`` fixture.

Run from this folder: ``pytest``. Test ids are the variants as configured
(``test_release_gate[build/Q3_K_M-q8-embed.gguf]``); checks name a file by its stem.
"""

import pytest

from conftest import CANDIDATE
from pytest_quantcheck.assertions import (
    assert_kl_divergence_at_most,
    assert_perplexity_within,
    assert_size_at_most,
)


@pytest.mark.perplexity_within(pct=25)  # against the F32 base, this run
@pytest.mark.kl_divergence_at_most(0.4)
@pytest.mark.size_at_most(bpw=5.5)
def test_release_gate(quant_model):
    pass


def test_custom_recipe_beats_the_stock_type_of_its_size(quantize):
    candidate = quantize(str(CANDIDATE))  # a path works wherever a variant name does
    stock = quantize("Q4_K_M")
    assert_size_at_most(candidate, bytes=stock.size_bytes * 1.01)  # the same size, within 1%
    # prove: pass only when the 95% bound on the perplexity ratio lies below 1
    assert_perplexity_within(candidate, stock, pct=0, mode="prove")
    assert_kl_divergence_at_most(candidate, 0.02, mode="prove")


def test_recipe_against_its_own_file_type(quantize):
    # An ad-hoc variant, built (and cached) inside the test: the Q3_K_M the recipe starts from.
    q3 = quantize("Q3_K_M")
    assert_perplexity_within(quantize(str(CANDIDATE)), q3, pct=0, mode="prove")
