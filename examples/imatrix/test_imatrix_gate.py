"""Gate an importance-matrix (imatrix) quantization against the same type without one.

Run from this folder: ``pytest``. Every variant is built with ``demo.imatrix.gguf`` (the
``imatrix`` setting); ``without_imatrix("IQ3_M")`` (conftest.py) builds the same type without it.
Both comparisons are paired per chunk of the evaluation text: the two files score the same
tokens, so chunk-to-chunk variation in difficulty cancels out.
"""

import pytest

from pytest_quantcheck.assertions import assert_perplexity_within
from pytest_quantcheck.stats import PASS, paired_mean_at_most


@pytest.mark.kl_divergence_at_most(0.65)  # from the F32 base, this run
@pytest.mark.size_at_most(bpw=4)
def test_variant_quality(quant_model):
    pass


def test_no_worse_than_without_imatrix(quant_model, without_imatrix):
    plain = without_imatrix(quant_model.file_type)
    assert quant_model.size_bytes == plain.size_bytes  # the imatrix changes values, not layout
    # Mean KL divergence from the base: a paired t-test on per-chunk differences (no marker
    # compares KLD between two variants, so this uses the statistics module directly). It comes
    # first: the KL pass yields each model's perplexity too, so nothing is decoded twice.
    kld = paired_mean_at_most(quant_model.kl_divergence().chunk_kld,
                              plain.kl_divergence().chunk_kld, 0.0, alpha=0.05, mode="detect",
                              what="chunk mean KLD differences")
    assert kld.verdict == PASS, (
        f"mean KLD of {quant_model.name} exceeds {plain.name}'s by {kld.estimate:.4f}"
        f" (90% CI {kld.low:.4f} to {kld.high:.4f}; {kld.test}, p = {kld.p_value:.3g})")
    # detect (the default): fail only when the data show the imatrix variant is worse
    assert_perplexity_within(quant_model, plain, pct=0)


def test_imatrix_makes_iq3_m_better(quantize, without_imatrix):
    # prove: pass only when the 95% upper bound of the perplexity ratio lies below 1
    assert_perplexity_within(quantize("IQ3_M"), without_imatrix("IQ3_M"), pct=0, mode="prove")
