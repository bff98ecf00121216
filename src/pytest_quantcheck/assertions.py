"""Assertion helpers for existing tests: the markers' semantics and messages, as functions.

    from pytest_quantcheck.assertions import assert_perplexity_within

    def test_my_release(quant_model, quant_reference):
        assert_perplexity_within(quant_model, quant_reference, pct=3)

Models are the ``quant_model`` / ``quant_reference`` / ``quantize(...)`` fixtures' objects (or any
object with ``name``, ``size_bytes``, ``bits_per_weight``, ``perplexity()`` and, for the KL checks,
``kl_divergence()``). Each raises ``AssertionError`` with the full message on failure (and on an
inconclusive ``prove``), and returns the outcome otherwise.
"""

from __future__ import annotations

from typing import Any

from pytest_quantcheck import checks


def _run(marker: str, model: Any, args: dict[str, Any], alpha: float, mode: str,
         of: Any = None) -> checks.Outcome:
    __tracebackhide__ = True
    if mode not in ("detect", "prove"):
        raise checks.CheckArgumentError(f"mode must be 'detect' or 'prove', got {mode!r}")

    def resolve(subject: Any, _of: str | None) -> checks.Against:
        other = of if of is not None else subject.reference()
        return checks.Against(other.name, other.perplexity().chunk_nll)

    outcome = checks.evaluate(checks.parse(marker, (), args), model,
                              checks.Context(alpha, mode, resolve))
    if not outcome.passed:
        raise AssertionError(outcome.message())
    return outcome


def assert_perplexity_within(model: Any, of: Any = None, *, pct: float, alpha: float = 0.05,
                             mode: str = "detect") -> checks.Outcome:
    """PPL of ``model`` at most ``pct`` % above that of ``of`` (default: the session reference)."""
    __tracebackhide__ = True
    return _run("perplexity_within", model, {"pct": pct}, alpha, mode, of)


def assert_perplexity_at_most(model: Any, value: float, *, alpha: float = 0.05,
                              mode: str = "detect") -> checks.Outcome:
    __tracebackhide__ = True
    return _run("perplexity_at_most", model, {"value": value}, alpha, mode)


def assert_kl_divergence_at_most(model: Any, value: float, *, stat: str = "mean",
                                 alpha: float = 0.05, mode: str = "detect") -> checks.Outcome:
    __tracebackhide__ = True
    return _run("kl_divergence_at_most", model, {"value": value, "stat": stat}, alpha, mode)


def assert_top1_agreement_at_least(model: Any, fraction: float, *, alpha: float = 0.05,
                                   mode: str = "detect") -> checks.Outcome:
    __tracebackhide__ = True
    return _run("top1_agreement_at_least", model, {"fraction": fraction}, alpha, mode)


def assert_size_at_most(model: Any, *, bytes: float | None = None,
                        bpw: float | None = None) -> checks.Outcome:
    __tracebackhide__ = True
    args = {k: v for k, v in (("bytes", bytes), ("bpw", bpw)) if v is not None}
    return _run("size_at_most", model, args, 0.05, "detect")
