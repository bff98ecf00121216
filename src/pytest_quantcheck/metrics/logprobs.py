"""Log-probabilities from logits with llama.cpp's own arithmetic.

``llama-perplexity`` takes the row maximum in float32, subtracts it in float32, exponentiates in
float32 (``expf``) and sums in double. Doing the same keeps our numbers equal to theirs to the
last printed digit instead of "close".
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def _shift_and_lse(logits: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Rows minus their maximum (float32) and log of the sum of exponentials (float64)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64))
    return shifted, lse


def target_logprobs(logits: NDArray[np.float32], targets: NDArray[np.int32]) -> NDArray[np.float64]:
    """log p(target) for each row of ``logits`` (shape ``(n, n_vocab)``)."""
    shifted, lse = _shift_and_lse(logits)
    picked = shifted[np.arange(len(targets)), targets].astype(np.float64)
    return picked - lse


def log_softmax(logits: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """Full log-probabilities (float64) and the float32 ``exp(logit - max)`` terms behind them.

    ``log_softmax(x)[i, t]`` equals ``target_logprobs(x, t)[i]`` exactly, so perplexity and
    KL divergence of one model agree bit for bit.
    """
    shifted, lse = _shift_and_lse(logits)
    return shifted.astype(np.float64) - lse[:, None], np.exp(shifted)
