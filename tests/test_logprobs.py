from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quantcheck.metrics.logprobs import log_softmax, target_logprobs


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


def test_full_log_softmax_agrees_bit_for_bit_with_target_logprobs() -> None:
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((8, 50)).astype(np.float32) * 4
    targets = rng.integers(0, 50, 8).astype(np.int32)
    full, _ = log_softmax(logits)
    assert np.array_equal(full[np.arange(8), targets], target_logprobs(logits, targets))
    np.testing.assert_allclose(np.exp(full).sum(axis=1), 1.0, rtol=1e-6)
