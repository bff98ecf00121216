"""What a check is decided on and what it decides: the :class:`Subject` (a model), what it is
compared with (:class:`Against`, :class:`SpeedAgainst`, :class:`TaskAgainst`, found through
:class:`~pytest_quantcheck.checks.comparison.Comparisons`), and the
:class:`Outcome`, whose ``message`` says what was measured, against what, by how much, how sure,
and what to do. No pytest here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from pytest_quantcheck import stats
from pytest_quantcheck.baseline import UPDATE_FLAG
from pytest_quantcheck.metrics.memory import MemoryUsage
from pytest_quantcheck.metrics.task_answers import TaskResult
from pytest_quantcheck.metrics.throughput import BenchResult, ThroughputRun
from pytest_quantcheck.tensor_mix import TensorMix


class CheckArgumentError(ValueError):
    """A marker or helper called with arguments it does not take."""


class CheckSkipped(Exception):
    """A check that cannot be decided here and says why (a baseline from another machine, no
    GPU); it is reported as skipped, never as passed or failed."""


class Subject(Protocol):
    """The model a check decides on: its file, and what is measured of it whole (chunk and task
    measurements come through :class:`~pytest_quantcheck.checks.comparison.Comparisons`, which
    knows how many a decision rests on)."""

    name: str
    size_bytes: int

    @property
    def bits_per_weight(self) -> float: ...

    def throughput(self) -> ThroughputRun: ...

    def memory(self) -> MemoryUsage: ...

    def tensor_mix(self) -> TensorMix: ...


@dataclass(frozen=True)
class SpeedAgainst:
    """What a relative throughput check compares with: a result of this run or a baseline's."""

    label: str
    result: BenchResult
    is_baseline: bool = False
    runs: tuple[BenchResult, ...] = ()  # a baseline's separate runs on this machine, oldest first
    # the subject's own run, measured interleaved with ``result`` (ABAB), to compare with it
    mine: ThroughputRun | None = None


@dataclass(frozen=True)
class Against:
    """What a relative check compares with: another model's numbers, or a baseline record."""

    label: str  # "F16 (reference)", "baseline baselines/x.quantcheck.json", "Q8_0"
    chunk_nll: np.ndarray[Any, np.dtype[np.float64]]
    is_baseline: bool = False

    @property
    def ppl(self) -> float:
        return math.exp(float(np.mean(self.chunk_nll)))


@dataclass(frozen=True)
class TaskAgainst:
    """What a task check compares with: another model's per-task correctness, or a baseline's."""

    label: str
    correct: np.ndarray[Any, np.dtype[np.bool_]]
    selection: str  # TaskResult.selection(): answers pair only when it matches
    is_baseline: bool = False

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.correct.size else 0.0

    @classmethod
    def of(cls, label: str, result: TaskResult, is_baseline: bool = False) -> TaskAgainst:
        return cls(label, result.correct, result.selection(), is_baseline)


SKIPPED, ERROR, RECORDED = "skipped", "error", "recorded"
# Every fate a check can meet, in the order the count line says them. A check that was not
# decided (skipped, error) or, in an update run, stored rather than judged against the record
# being written (recorded) is shown with its reason everywhere a passed one is.
FATES = (stats.PASS, stats.FAIL, stats.INCONCLUSIVE, SKIPPED, ERROR, RECORDED)
_FATE_WORDS = {stats.PASS: "passed", stats.FAIL: "failed", stats.INCONCLUSIVE: "inconclusive",
               SKIPPED: "skipped", ERROR: "error", RECORDED: "recorded"}


def count_line(outcomes: Iterable[Outcome]) -> str:
    """``"7 passed, 1 failed, 2 skipped"``: every fate met, in :data:`FATES` order."""
    counts = Counter(o.verdict for o in outcomes)
    parts = [f"{counts[f]} {_FATE_WORDS[f]}" for f in FATES if counts[f]]
    return ", ".join(parts) if parts else "no checks"


@dataclass(frozen=True)
class Outcome:
    check: str  # "perplexity_within(pct=3)"
    variant: str
    metric: str  # column of the summary table
    verdict: str  # one of FATES
    measured: float | None  # None: not measured (skipped, error)
    compared: float | None  # reference / baseline / limit value
    change: float | None  # relative change against ``compared``
    limit: str  # the tolerance, in words
    decision: stats.Decision | None
    mode: str
    alpha: float
    against: str = ""
    baseline: bool = False
    p_adjusted: float | None = None
    nodeid: str = ""  # the test that ran the check, and where it is defined
    file: str = ""
    line: int = 0
    note: str = ""  # where a speed or memory figure was measured, and how near the hardware
    # What the numbers rest on: n chunks (tasks, repetitions...) of n_available, on a text
    # (None: the default one). A check decided in looks uses fewer than a full run would.
    n: int | None = None
    unit: str = ""
    n_available: int | None = None
    text: str | None = None
    reason: str = ""  # skipped, error, recorded: why, and what to do

    def __post_init__(self) -> None:
        if self.n is None and self.decision is not None:  # the statistics' own count
            object.__setattr__(self, "n", self.decision.n)
            object.__setattr__(self, "unit", self.decision.unit)

    @classmethod
    def undecided(cls, check: str, variant: str, metric: str, verdict: str, reason: str,
                  mode: str, alpha: float, baseline: bool = False) -> Outcome:
        """A check that met no verdict: skipped or error, with the reason and the fix."""
        return cls(check, variant, metric, verdict, None, None, None, "", None, mode, alpha,
                   baseline=baseline, reason=reason)

    def basis(self) -> str:
        """What the numbers rest on, in words: ``"8 of 64 chunks"``, ``"400 tasks"``."""
        if self.n is None:
            return ""
        total = (f" of {self.n_available}" if self.n_available is not None
                 and self.n_available != self.n else "")
        on = f" of {self.text}" if self.text else ""
        return f"{self.n}{total} {self.unit}{on}"

    def change_text(self) -> str:
        """The change against what was compared: relative (%), or in points for accuracy,
        which is itself a fraction."""
        if self.change is None:
            return ""
        if self.metric.endswith(" accuracy"):
            return f"{100 * self.change:+.2f} points"
        return f"{self.change:+.2%}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["message"] = self.message()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        fields = {k: v for k, v in data.items() if k != "message"}
        if fields.get("decision") is not None:
            fields["decision"] = stats.Decision(**fields["decision"])
        return cls(**fields)

    @property
    def passed(self) -> bool:
        return self.verdict == stats.PASS

    @property
    def blocking(self) -> bool:
        """A fate that turns a gate red: failed, inconclusive (prove mode) or error."""
        return self.verdict in (stats.FAIL, stats.INCONCLUSIVE, ERROR)

    def message(self) -> str:
        d = self.decision
        head = f"{self.check} {self.verdict.upper()} for {self.variant}"
        if self.measured is None:
            return f"{head}: {self.reason}"
        head += f": {self.metric} {_num(self.measured)}"
        if self.verdict == RECORDED:
            on = f" over {self.basis()}" if self.basis() else ""
            return f"{head}{on}; {self.reason}"
        if self.compared is not None:
            head += f" vs {_num(self.compared)}"
            if self.against:
                head += f" ({self.against})"
        if self.change is not None:
            head += f", {self.change_text()}"
        if self.basis():
            head += f" over {self.basis()}"
        parts = [head]
        if d is not None:
            level = 1 - 2 * self.alpha
            parts.append(f"{level:.0%} CI {self._interval(d)}")
        parts.append(f"tolerance {self.limit}")
        if d is not None:
            p = f"p = {d.p_value:.3g}"
            if self.p_adjusted is not None:
                p += f" (Holm-adjusted {self.p_adjusted:.3g})"
            parts.append(f"{d.test}, {p}, mode {self.mode}, alpha {self.alpha:.3g}")
            if d.more_needed is not None:
                parts.append(f"about {d.more_needed} {d.unit} would likely decide")
        if self.note:
            parts.append(self.note)
        text = "; ".join(parts)
        if self.baseline and not self.passed:
            text += f". If the change is intended, update the baseline with {UPDATE_FLAG}"
        return text

    def _interval(self, d: stats.Decision) -> str:
        if self.change is not None and self.compared is not None and self.metric == "PPL":
            return f"{math.exp(d.low) - 1:+.2%} to {math.exp(d.high) - 1:+.2%}"
        if self.metric == "PPL":
            return f"{math.exp(d.low):.4g} to {math.exp(d.high):.4g}"
        if self.metric.endswith(" accuracy") and self.change is not None:  # of the drop
            return f"a drop of {100 * d.low:+.2f} to {100 * d.high:+.2f} points"
        if self.metric == "top-1 agreement" or self.metric.endswith((" accuracy", " flips")):
            return f"{d.low:.2%} to {d.high:.2%}"
        if self.metric.endswith("t/s") and self.change is not None:
            return f"{math.exp(d.low) - 1:+.2%} to {math.exp(d.high) - 1:+.2%}"
        return f"{_num(d.low)} to {_num(d.high)}"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


# ---- evaluation --------------------------------------------------------------------------------


def apply_holm(outcomes: list[Outcome]) -> list[Outcome]:
    """Holm-adjust the p-values of statistical outcomes; verdicts follow the adjusted values."""
    tested = [i for i, o in enumerate(outcomes) if o.decision is not None]
    adjusted = stats.holm([outcomes[i].decision.p_value for i in tested])  # type: ignore[union-attr]
    result = list(outcomes)
    for i, p_adj in zip(tested, adjusted, strict=True):
        o = outcomes[i]
        verdict = o.verdict
        if o.mode == "detect":
            verdict = stats.FAIL if p_adj < o.alpha else stats.PASS
        elif o.verdict == stats.PASS and p_adj >= o.alpha:
            verdict = stats.INCONCLUSIVE
        result[i] = replace(o, verdict=verdict, p_adjusted=p_adj)
    return result
