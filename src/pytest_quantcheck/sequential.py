"""Sequential looks: when a chunk-based check may be decided, and at what level.

A model is decoded in looks of growing size: the first after ``min_chunks`` chunks, then at twice
as many, and so on, the last look at every chunk (``chunks``, or all the text offers). The look
before the last is at most half the total, so the last look keeps a real share of ``alpha``.

The error rate is held by alpha spending with the union bound: look ``k`` tests at level
``alpha * (t_k - t_{k-1})``, where ``t_k`` is the share of the chunks seen by look ``k`` (the
linear spending function), so the levels of all looks sum to ``alpha``. Whatever the correlation
between looks, the chance of any false decision is at most their sum (Bonferroni), so optional
stopping cannot raise it above ``alpha``; the bound ignores that looks share chunks, which makes
it conservative (the price, measured by ``benchmarks/sequential_calibration.py``, is a little
power at the last look). At an interim look a check is decided only when the data settle it at
that look's level: shown within its tolerance (pass) or shown beyond it (fail); otherwise the
model is decoded further. At the last look the check is decided as a fixed-length check would be,
in the run's mode, at the level left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from pytest_quantcheck.stats import FAIL, PASS


def look_schedule(n_total: int, min_chunks: int, group: int = 1) -> list[int]:
    """Chunk counts at which to look: ``min_chunks`` (rounded up to whole groups of ``group``
    chunks, the batch the protocol decodes together), doubling while at most half of
    ``n_total``, then ``n_total``."""
    if n_total < 1:
        raise ValueError("no chunks to look at")
    first = -(-max(2, min_chunks) // group) * group
    looks = []
    n = first
    while n <= n_total // 2:
        looks.append(n)
        n *= 2
    return [*looks, n_total]


def look_alphas(looks: list[int], alpha: float) -> list[float]:
    """Each look's level under linear alpha spending; they sum to ``alpha``."""
    total = looks[-1]
    shares = [n / total for n in looks]
    return [alpha * (t - prev) for prev, t in zip([0.0, *shares[:-1]], shares, strict=True)]


class _Decided(Protocol):
    @property
    def verdict(self) -> str: ...


D = TypeVar("D", bound=_Decided)


def decide(looks: list[int], alphas: list[float], mode: str,
           evaluate: Callable[[int, float, str], D]) -> tuple[D, int]:
    """Decide one check in looks: ``evaluate(n, level, mode)`` decides it on the first ``n``
    chunks at ``level``. An interim look settles the check when the data show it beyond the
    tolerance (detect's failure) or within it (prove's pass); the last look decides in ``mode``.
    Returns the outcome (in ``mode``) and the index of the look that decided."""
    other = "prove" if mode == "detect" else "detect"
    for i, (n, level) in enumerate(zip(looks, alphas, strict=True)):
        outcome = evaluate(n, level, mode)
        if i == len(looks) - 1:
            return outcome, i
        verdicts = {mode: outcome.verdict, other: evaluate(n, level, other).verdict}
        if verdicts["detect"] == FAIL or verdicts["prove"] == PASS:
            return outcome, i
    raise ValueError("no looks")
