from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quantcheck.metrics import logprobs
from pytest_quantcheck.metrics.kld import compare_tokens, reference_rows
from pytest_quantcheck.metrics.logprobs import logprobs_at, row_sums, target_logprobs


def naive_logprob(row: np.ndarray, target: int) -> float:
    values = [float(x) for x in row]
    m = max(values)
    return values[target] - m - math.log(sum(math.exp(v - m) for v in values))


@pytest.mark.parametrize("scale", [0.1, 5.0, 300.0])
def test_target_logprobs_match_a_naive_float64_loop(scale: float) -> None:
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((20, 97)) * scale).astype(np.float32)
    targets = rng.integers(0, 97, 20).astype(np.int32)
    got = target_logprobs(logits, targets)
    want = [naive_logprob(logits[i], int(targets[i])) for i in range(20)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_perplexity_and_kl_divergence_agree_bit_for_bit() -> None:
    # the NLL a KL pass reports is the one a perplexity pass computes, to the last bit
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((19, 50)).astype(np.float32) * 4
    targets = rng.integers(0, 50, 19).astype(np.int32)
    cmp = compare_tokens(reference_rows(logits, targets, 1e-3, 8), logits, targets)
    assert np.array_equal(cmp.nll, -target_logprobs(logits, targets))
    assert np.array_equal(reference_rows(logits, targets).target_logp,
                          target_logprobs(logits, targets))


def test_row_sums_are_double_sums() -> None:
    # a peaked row: float32 accumulation would drop the small terms (2e-8 of the sum here)
    rng = np.random.default_rng(5)
    terms = np.exp(rng.standard_normal((6, 20000)) * 6 - 40).astype(np.float32)
    terms[:, 7] = 1.0
    exact = np.array([math.fsum(float(x) for x in row) for row in terms])
    np.testing.assert_allclose(row_sums(terms), exact, rtol=1e-14, atol=0)


def test_threads_and_blocks_do_not_change_a_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    logits = (rng.standard_normal((53, 3000)) * 3).astype(np.float32)
    targets = rng.integers(0, 3000, 53).astype(np.int32)
    one = target_logprobs(logits, targets, threads=1)
    ref_one = reference_rows(logits, targets, 1e-4, 64, threads=1)
    cmp_one = compare_tokens(ref_one, logits[::-1].copy(), targets, threads=1)
    monkeypatch.setattr(logprobs, "ROW_BLOCK", 3)  # blocks that do not divide the rows
    assert np.array_equal(target_logprobs(logits, targets, threads=3), one)
    ref_three = reference_rows(logits, targets, 1e-4, 64, threads=3)
    for name in ("offsets", "ids", "logp", "tail_logp", "target_logp", "top1"):
        assert np.array_equal(getattr(ref_three, name), getattr(ref_one, name)), name
    cmp_three = compare_tokens(ref_three, logits[::-1].copy(), targets, threads=3)
    assert np.array_equal(cmp_three.kld, cmp_one.kld)
    assert np.array_equal(cmp_three.tail_bound, cmp_one.tail_bound)


def test_logprobs_at_reads_repeated_rows_once_and_equals_target_logprobs() -> None:
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((12, 700)) * 2).astype(np.float32)
    rows = np.array([0, 0, 0, 5, 11, 5, 2], dtype=np.int64)
    targets = rng.integers(0, 700, len(rows)).astype(np.int64)
    got = logprobs_at(logits, rows, targets, threads=2)
    want = target_logprobs(logits[rows], targets.astype(np.int32))
    assert np.array_equal(got, want)
