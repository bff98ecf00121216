"""Assertion helpers for existing tests: every registered check as a function, with the markers'
semantics and messages.

    from pytest_quantcheck.assertions import assert_perplexity_within

    def test_my_release(quant_model, quant_reference):
        assert_perplexity_within(quant_model, quant_reference, pct=3)

``assert_<marker>(model, ...)`` takes the model to check, then, for checks that compare with
another model (``perplexity_within``, ``throughput_at_least``, the task comparisons), that model
(default: the run's reference), then the marker's arguments (the first ones positionally, as the
marker takes them, for the others), and ``alpha=0.05`` / ``mode="detect"``. The KL checks take
the model to take the divergence from as the keyword ``of=`` (default: the run's reference).
Models are the ``quant_model`` / ``quant_reference`` / ``quantize(...)`` fixtures' objects (or
any object with ``name``, ``size_bytes``, ``bits_per_weight``, ``perplexity()`` and, for the
other checks, ``kl_divergence()``, ``throughput()``, ``memory()`` or ``task(name)``). A helper raises
``AssertionError`` with the full message on failure (and on an inconclusive ``prove``), and
returns the outcome otherwise; a check that cannot be decided here (GPU memory without a GPU) raises
:class:`pytest_quantcheck.checks.CheckSkipped`. On the fixtures' models the outcome also goes to
the run's summary table, ``--quant-json``, ``--quant-junit`` and the GitHub summary, with the
test's node id and the helper call's line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from pytest_quantcheck import checks
from pytest_quantcheck.models import Models

Helper = Callable[..., checks.Outcome]


def _where_fields() -> dict[str, Any]:
    """The running test's node id and the line that called the helper, as outcome fields."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    nodeid = current.rsplit(" (", 1)[0]
    frame = sys._getframe(3)  # the test's frame: helper -> _run -> _where_fields
    return {"nodeid": nodeid, "file": os.path.relpath(frame.f_code.co_filename),
            "line": frame.f_lineno}


def _run(kind: checks.CheckType, model: Any, of: Any, args: tuple[Any, ...],
         kwargs: dict[str, Any], alpha: float, mode: str) -> checks.Outcome:
    __tracebackhide__ = True
    if mode not in ("detect", "prove"):
        raise checks.CheckArgumentError(f"mode must be 'detect' or 'prove', got {mode!r}")
    models = getattr(model, "models", None)
    if isinstance(models, Models) and models.decide is not None:
        # a fixture's model: decided by the run, as a marker with these arguments would be
        check = checks.parse(kind.marker, args, kwargs)
        conflict = check.kind.conflict(check.args, models.store.settings)
        if conflict:  # what a marker's arguments are checked against at collection
            raise checks.CheckArgumentError(f"assert_{kind.marker}: {conflict}")
        where = _where_fields()
        outcome = models.decide(check, model, alpha, mode,
                                (where["nodeid"], where["file"], where["line"]))
    else:
        # a model outside a run: measured by its own methods, compared with ``of`` or its
        # reference
        outcome = checks.parse(kind.marker, args, kwargs).evaluate(
            model, checks.OwnMeasurements(alpha, mode, of))
    if not outcome.passed:
        raise AssertionError(outcome.message())
    return outcome


def _helper(marker: str) -> Helper:
    kind = checks.REGISTRY[marker]
    of_param = next((p for p in kind.params if p.name == "of"), None)

    def helper(model: Any, *args: Any, alpha: float = 0.05, mode: str = "detect",
               **kwargs: Any) -> checks.Outcome:
        __tracebackhide__ = True
        of = None
        if of_param is not None and of_param.kind == "model":  # KL checks: of= by keyword only
            of = kwargs.pop("of", None)
            if isinstance(of, str):
                raise checks.CheckArgumentError(
                    f"assert_{marker}: of= takes a model (a fixture's object), not {of!r}")
            if of is not None:
                kwargs["of"] = of.name
        elif of_param is not None:
            if len(args) > 1:
                raise checks.CheckArgumentError(
                    f"assert_{marker} takes the model, the model to compare with, and keywords")
            of = args[0] if args else kwargs.pop("of", None)
            if isinstance(of, str):
                raise checks.CheckArgumentError(
                    f"assert_{marker}: of= takes a model (a fixture's object), not {of!r}")
            args = ()
            if of is not None:
                kwargs["of"] = of.name
            elif of_param.default is not None and kind.comparison_arg in kwargs:
                kwargs["of"] = "reference"  # a helper's default, not the marker's ("baseline")
        return _run(kind, model, of, args, kwargs, alpha, mode)

    helper.__name__ = helper.__qualname__ = f"assert_{marker}"
    helper.__doc__ = f"Assert {kind.signature()}: {kind.summary.replace('`', '')}."
    return helper


assert_perplexity_within = _helper("perplexity_within")
assert_perplexity_at_most = _helper("perplexity_at_most")
assert_kl_divergence_at_most = _helper("kl_divergence_at_most")
assert_top1_agreement_at_least = _helper("top1_agreement_at_least")
assert_size_at_most = _helper("size_at_most")
assert_throughput_at_least = _helper("throughput_at_least")
assert_memory_at_most = _helper("memory_at_most")
assert_accuracy_at_least = _helper("accuracy_at_least")
assert_accuracy_within = _helper("accuracy_within")
assert_flips_at_most = _helper("flips_at_most")
assert_tensors_unchanged = _helper("tensors_unchanged")
