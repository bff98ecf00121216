"""File checks: what llama.cpp wrote into a variant, against what the baseline recorded or
another file holds.

The question after a llama.cpp upgrade, a new imatrix or a changed recipe is often not "is it
worse?" but "did anything change at all?". A baseline keeps each tensor's type and the SHA-256 of
its bytes; this check names the tensors that differ. No statistics: bytes are equal or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_quantcheck import stats
from pytest_quantcheck.checks.comparison import Comparisons
from pytest_quantcheck.checks.outcome import Outcome, Subject
from pytest_quantcheck.checks.registry import SIZE, CheckType, Param
from pytest_quantcheck.tensor_mix import changed_tensors


class TensorsUnchanged(CheckType):
    marker = "tensors_unchanged"
    params = (Param("of", "target", default="baseline"),)
    summary = ("every tensor's type and bytes as the baseline recorded them (`of=\"baseline\"`)"
               " or as another variant or .gguf file holds them; names the tensors that changed,"
               " e.g. after a llama.cpp upgrade")

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({SIZE})

    def compares_with(self, args: Mapping[str, Any]) -> str | None:
        of: str | None = args["of"]
        return of

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        label, stored = ctx.tensors_against(subject, args["of"])
        now = subject.tensor_mix().hashes()
        changed = changed_tensors(now, stored)
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8
                                          else "")
        note = (f"{len(changed)} of {len(now)} tensors differ from {label}: {shown}" if changed
                else f"all {len(now)} tensors as in {label}")
        return Outcome(metric="tensors changed", verdict=stats.FAIL if changed else stats.PASS,
                       measured=float(len(changed)), compared=0.0, change=None,
                       limit="none changed", decision=None, against=label,
                       baseline=args["of"] == "baseline", note=note, **base)
