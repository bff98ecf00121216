"""Quality gates for the quantized variants of the built-in demo model.

Run from this folder: ``pytest --quant-baseline`` (``make demo`` does). Every test is an ordinary
pytest test; the markers add statistical checks decided per chunk of the evaluation text.
"""

import pytest

from pytest_quantcheck.assertions import (
    assert_flips_at_most,
    assert_kl_divergence_at_most,
    assert_perplexity_within,
    assert_top1_agreement_at_least,
)


@pytest.mark.perplexity_within(pct=50)  # against the F32 base, this run
@pytest.mark.perplexity_within(pct=1, of="baseline")  # no regression against the committed record
@pytest.mark.size_at_most(bpw=9)
def test_variant_quality(quant_model):
    assert quant_model.size_bytes > 0  # ordinary asserts still work


@pytest.mark.kl_divergence_at_most(0.7)
@pytest.mark.kl_divergence_at_most(4.0, stat="p99")
def test_distribution_shift(quant_model):
    pass


# Task accuracy on the built-in demo tasks (made from the held-out text; see docs/guides/tasks.md), scored
# as llama-perplexity --hellaswag / --winogrande / --multiple-choice scores them.
@pytest.mark.accuracy_at_least("winogrande", 0.55)  # well above chance (0.5)
@pytest.mark.accuracy_within("multiple-choice", points=10)  # paired with the base, task by task
@pytest.mark.flips_at_most("hellaswag", fraction=0.3)  # answers that changed, right or wrong
def test_task_accuracy(quant_model):
    pass


def test_q8_0_is_near_lossless(quantize):
    q8 = quantize("Q8_0")
    assert_perplexity_within(q8, pct=0.5)
    assert_kl_divergence_at_most(q8, 0.005)
    assert_top1_agreement_at_least(q8, 0.97)
    assert_flips_at_most(q8, task="hellaswag", fraction=0.02)


def test_more_bits_are_better(quantize):
    q5, q2 = quantize("Q5_K_M"), quantize("Q2_K")
    assert_perplexity_within(q5, q2, pct=0)  # Q5_K_M no worse than Q2_K


@pytest.mark.memory_at_most(mb=256)  # peak resident memory of load plus one evaluation batch
@pytest.mark.throughput_at_least(tokens_per_s=50)  # a generation floor, on any machine
@pytest.mark.throughput_at_least(pct=-50)  # vs the baseline, where it was recorded (else skipped)
def test_speed_and_memory(quant_model):
    pass
