"""Assertion helpers for existing tests: the markers' semantics and messages, as functions.

    from pytest_quantcheck.assertions import assert_perplexity_within

    def test_my_release(quant_model, quant_reference):
        assert_perplexity_within(quant_model, quant_reference, pct=3)

Models are the ``quant_model`` / ``quant_reference`` / ``quantize(...)`` fixtures' objects (or any
object with ``name``, ``size_bytes``, ``bits_per_weight``, ``perplexity()`` and, for the other
checks, ``kl_divergence()``, ``throughput()`` or ``memory()``). Each raises ``AssertionError``
with the full message on failure (and on an inconclusive ``prove``), and returns the outcome
otherwise. A check that cannot be decided here (GPU memory without a GPU) raises
:class:`pytest_quantcheck.checks.CheckSkipped`.
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

    def resolve_speed(subject: Any, _of: str, phase: str) -> checks.SpeedAgainst:
        other = of if of is not None else subject.reference()
        tests = other.throughput().tests
        if phase not in tests:
            raise checks.CheckArgumentError(f"{other.name} has no {phase} throughput test")
        return checks.SpeedAgainst(other.name, tests[phase])

    outcome = checks.evaluate(checks.parse(marker, (), args), model,
                              checks.Context(alpha, mode, resolve, resolve_speed))
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


def assert_throughput_at_least(model: Any, of: Any = None, *, tokens_per_s: float | None = None,
                               pct: float | None = None, phase: str = "tg", alpha: float = 0.05,
                               mode: str = "detect") -> checks.Outcome:
    """Mean tokens/s of llama-bench's ``phase`` test at least ``tokens_per_s``, or at most
    ``-pct`` % below that of ``of`` (default: the session reference), measured in this run."""
    __tracebackhide__ = True
    args: dict[str, Any] = {"phase": phase}
    if tokens_per_s is not None:
        args["tokens_per_s"] = tokens_per_s
    if pct is not None:
        args.update(pct=pct, of=getattr(of, "name", None) or "reference")
    return _run("throughput_at_least", model, args, alpha, mode, of)


def assert_memory_at_most(model: Any, *, mb: float, device: str = "host") -> checks.Outcome:
    """Peak resident memory (``device="gpu"``: GPU memory) of load plus one evaluation batch at
    most ``mb`` MiB."""
    __tracebackhide__ = True
    return _run("memory_at_most", model, {"mb": mb, "device": device}, 0.05, "detect")
