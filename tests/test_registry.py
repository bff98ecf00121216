"""The check registry: markers, the docs' marker table (tests/test_docs.py), the assertion helpers
and the plan all come from one class per check."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_quantcheck import assertions, checks
from pytest_quantcheck.checks.registry import KL, PPL, CheckType, Param, speed


def test_every_check_has_an_assertion_helper_and_nothing_else_does() -> None:
    helpers = {name for name in vars(assertions) if name.startswith("assert_")}
    assert helpers == {f"assert_{marker}" for marker in checks.REGISTRY}
    for marker, kind in checks.REGISTRY.items():
        helper = getattr(assertions, f"assert_{marker}")
        assert helper.__name__ == f"assert_{marker}" and kind.signature() in (helper.__doc__ or "")


def test_signatures_show_defaults_and_alternatives() -> None:
    sig = {m: k.signature() for m, k in checks.REGISTRY.items()}
    assert sig["perplexity_within"] == "perplexity_within(pct, of=None, text=None)"
    assert sig["kl_divergence_at_most"] == (
        'kl_divergence_at_most(value, stat="mean", of=None, text=None)')
    assert sig["size_at_most"] == "size_at_most(bytes=... | bpw=...)"
    assert sig["throughput_at_least"] == (
        'throughput_at_least(tokens_per_s=... | pct=..., of="baseline", phase="tg")')


@pytest.mark.parametrize(("marker", "kwargs", "needs", "against"), [
    ("perplexity_within", {"pct": 3}, {PPL}, None),
    ("perplexity_within", {"pct": 3, "of": "baseline"}, {PPL}, "baseline"),
    ("kl_divergence_at_most", {"value": 0.1}, {KL}, None),
    ("top1_agreement_at_least", {"fraction": 0.9}, {KL}, None),
    ("throughput_at_least", {"pct": -5, "phase": "pp"}, {speed("pp")}, "baseline"),
    ("throughput_at_least", {"tokens_per_s": 10}, {speed("tg")}, None),
])
def test_what_a_check_needs_and_compares_with(marker: str, kwargs: dict[str, Any],
                                              needs: set[str], against: str | None) -> None:
    check = checks.parse(marker, (), kwargs)
    assert check.needs == needs and check.compares_with == against


@pytest.mark.parametrize(("marker", "args", "kwargs", "message"), [
    ("perplexity_within", (), {"pc": 3}, "perplexity_within got an unknown keyword 'pc'; allowed: pct, of"),
    ("perplexity_within", (), {}, "perplexity_within needs pct"),
    ("perplexity_within", (3,), {"pct": 3}, "perplexity_within got 'pct' twice"),
    ("perplexity_within", (1, 2, 3), {}, "perplexity_within takes at most 2 positional argument(s)"),
    ("kl_divergence_at_most", (0.1,), {"stat": "p42"}, "stat must be one of mean, median, p90"),
    ("size_at_most", (), {"bytes": 1, "bpw": 2}, "size_at_most takes exactly one of bytes= or bpw="),
    ("throughput_at_least", (), {"tokens_per_s": 5, "of": "Q8_0"}, "of= goes with pct="),
    ("top1_agreement_at_least", (1.5,), {}, "fraction must be between 0.0 and 1.0, got 1.5"),
    ("memory_at_most", (True,), {}, "mb must be a number, got True"),
    ("nope", (), {}, "unknown check 'nope'; known: perplexity_within, "),
])
def test_argument_errors_name_the_keyword_and_the_fix(marker: str, args: tuple[Any, ...],
                                                      kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(checks.CheckArgumentError) as info:
        checks.parse(marker, args, kwargs)
    assert message in str(info.value)


def test_a_new_check_is_one_class() -> None:
    class EvenSize(CheckType):
        marker = "test_even_size"
        params = (Param("by", low=1.0),)
        summary = "size divisible by `by`"

        def needs(self, args: Any) -> frozenset[str]:
            return frozenset({"size"})

        def evaluate(self, args: Any, subject: Any, ctx: checks.Comparisons,
                     base: dict[str, Any]) -> checks.Outcome:
            ok = subject.size_bytes % args["by"] == 0
            return checks.Outcome(metric="size", verdict="pass" if ok else "fail",
                                  measured=subject.size_bytes, compared=args["by"], change=None,
                                  limit=f"% {args['by']:g}", decision=None, **base)

    try:
        assert "`test_even_size(by)` | size divisible by `by` |" in checks.marker_table()
        assert checks.marker_lines()["test_even_size"] == "test_even_size(by): size divisible by by"

        class Model:
            name, size_bytes = "m", 64

        outcome = checks.parse("test_even_size", (8,)).evaluate(
            Model(), checks.OwnMeasurements())  # type: ignore[arg-type]
        assert outcome.passed and outcome.check == "test_even_size(by=8)"
        with pytest.raises(TypeError, match="two checks are named"):
            type("Again", (CheckType,), {"marker": "test_even_size"})
    finally:
        del checks.REGISTRY["test_even_size"]
