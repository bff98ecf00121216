"""Perplexity over scored tokens, as ``llama-perplexity`` reports it.

The estimate is ``exp(mean NLL)``; its ``±`` is llama.cpp's: ``PPL * sqrt(var(NLL) / (N - 1))``
with ``var`` the population variance over all scored tokens. That formula treats tokens as
independent, which they are not (tokens of one chunk share context), so it is reported for
comparability only; gates use per-chunk statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    ppl_err: float  # llama.cpp's "+/-"
    nll_mean: float
    n_tokens: int
    n_chunks: int
    n_ctx: int
    chunk_nll: NDArray[np.float64] = field(repr=False)  # mean NLL of each chunk
    token_nll: NDArray[np.float64] = field(repr=False)  # (n_chunks, scored per chunk)
    tokens_sha256: str = ""  # of the evaluated tokens: what baselines compare
    n_available: int = 0  # chunks the text offers under the protocol (0: n_chunks)
    # chunks (tasks) decoded to produce this result in the call that returned it; 0 when all
    # came from the result cache (run accounting, not part of the measurement)
    decoded: int = field(default=0, compare=False)

    def to_dict(self, *, tokens: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ppl": self.ppl,
            "ppl_err": self.ppl_err,
            "nll_mean": self.nll_mean,
            "n_tokens": self.n_tokens,
            "n_chunks": self.n_chunks,
            "n_ctx": self.n_ctx,
            "chunk_nll": self.chunk_nll.tolist(),
            "tokens_sha256": self.tokens_sha256,
        }
        if tokens:
            out["token_nll"] = self.token_nll.tolist()
        return out


def perplexity_from_nll(token_nll: NDArray[np.float64], n_ctx: int,
                        tokens_sha256: str = "", n_available: int = 0) -> PerplexityResult:
    """Summarize per-token NLL of shape ``(n_chunks, scored per chunk)``."""
    if token_nll.ndim != 2 or token_nll.size < 2:
        raise ValueError("need a (chunks, tokens) array of at least two scored tokens")
    count = token_nll.size
    flat = token_nll.reshape(-1)
    mean = float(flat.sum() / count)
    var = float(np.square(flat).sum() / count - mean * mean)
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 else 0.0
    return PerplexityResult(
        ppl=ppl,
        ppl_err=err,
        nll_mean=mean,
        n_tokens=count,
        n_chunks=token_nll.shape[0],
        n_ctx=n_ctx,
        chunk_nll=token_nll.mean(axis=1),
        token_nll=token_nll,
        tokens_sha256=tokens_sha256,
        n_available=n_available or token_nll.shape[0],
    )
