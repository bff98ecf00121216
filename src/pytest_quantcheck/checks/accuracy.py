"""Task checks: accuracy on HellaSwag, Winogrande or multiple-choice tasks, its drop against
another model, and the share of answers that flip between the two.

Two models answer the same tasks, so comparisons are paired: only the discordant tasks (right
for one model, wrong for the other) carry information, and "flips" counts them. The accuracy
can stay put while many answers flip, which is why both are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pytest_quantcheck import stats
from pytest_quantcheck.baseline import UPDATE_FLAG, BaselineError
from pytest_quantcheck.checks.comparison import Comparisons
from pytest_quantcheck.checks.outcome import Outcome, Subject, TaskAgainst
from pytest_quantcheck.checks.registry import CheckType, Param, task_need
from pytest_quantcheck.demo.task_sets import task_specs

if TYPE_CHECKING:
    from pytest_quantcheck.config import Settings
    from pytest_quantcheck.metrics.task_answers import TaskResult


class _TaskCheck(CheckType):
    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({task_need(args["task"])})

    def conflict(self, args: Mapping[str, Any], settings: Settings) -> str | None:
        known = task_specs(settings)
        if args["task"] not in known:
            names = ", ".join(known) or "none are set"
            return (f"task {args['task']!r} is not in the tasks setting ({names}); add it under"
                    " [tool.quantcheck.tasks]")
        return None


def _paired(subject: Subject, ctx: Comparisons, task: str,
            of: str | None) -> tuple[TaskResult, TaskAgainst, int, int]:
    """This model's result, the other side's, and the tasks lost and gained against it."""
    mine = ctx.task(subject, task)
    other = ctx.task_against(subject, of, task)
    if other.selection != mine.selection():
        raise _unpaired(task, other.label)
    if other.correct.size < mine.n_tasks:
        raise ValueError(f"task {task!r}: {other.label} has {other.correct.size} tasks scored,"
                         f" fewer than the {mine.n_tasks} to pair")
    other = replace(other, correct=other.correct[:mine.n_tasks])  # a look: the first tasks
    lost = int((other.correct & ~mine.correct).sum())
    gained = int((~other.correct & mine.correct).sum())
    return mine, other, lost, gained


def _unpaired(task: str, label: str) -> Exception:
    return BaselineError(f"task {task!r}: {label} scored other tasks (another file or task"
                         f" limit), so answers cannot be paired; record it again with"
                         f" {UPDATE_FLAG}")


def _flip_note(lost: int, gained: int, n: int, against: str) -> str:
    return (f"{lost + gained} of {n} answers flipped against {against} ({(lost + gained) / n:.2%}):"
            f" {lost} right to wrong, {gained} wrong to right")


class AccuracyAtLeast(_TaskCheck):
    marker = "accuracy_at_least"
    params = (Param("task", "name"), Param("value", low=0.0, high=1.0))
    summary = ("accuracy on the named task set (a fraction, HellaSwag / Winogrande /"
               " multiple-choice, as llama-perplexity scores it) at least `value`")

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        res = ctx.task(subject, args["task"])
        d = stats.rate_at_least(res.n_correct, res.n_tasks, args["value"], ctx.alpha, ctx.mode,
                                "right answers")
        return Outcome(metric=f"{args['task']} accuracy", verdict=d.verdict,
                       measured=res.accuracy, compared=args["value"], change=None,
                       limit=f">= {args['value']:.2%}", decision=d, against="limit", **base)


class AccuracyWithin(_TaskCheck):
    marker = "accuracy_within"
    comparison_arg = "points"
    params = (Param("task", "name"), Param("points", low=0.0, high=100.0),
              Param("of", "target", default=None))
    summary = ("accuracy at most `points` percentage points below the reference's (`of=None`),"
               " another variant's or the baseline's, paired task by task (exact McNemar test;"
               " Tango's score test with a margin)")

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        mine, other, lost, gained = _paired(subject, ctx, args["task"], args["of"])
        d = stats.paired_drop_at_most(lost, gained, mine.n_tasks, args["points"] / 100,
                                      ctx.alpha, ctx.mode)
        return Outcome(metric=f"{args['task']} accuracy", verdict=d.verdict,
                       measured=mine.accuracy, compared=other.accuracy,
                       change=mine.accuracy - other.accuracy,
                       limit=f"drop <= {args['points']:g} points", decision=d,
                       against=other.label, baseline=other.is_baseline,
                       note=_flip_note(lost, gained, mine.n_tasks, other.label), **base)


class FlipsAtMost(_TaskCheck):
    marker = "flips_at_most"
    comparison_arg = "fraction"
    params = (Param("task", "name"), Param("fraction", low=0.0, high=1.0),
              Param("of", "target", default=None))
    summary = ("share of tasks answered right by one model and wrong by the other (the"
               " reference, `of=` a variant or the baseline) at most `fraction` (exact binomial"
               " test)")

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        mine, other, lost, gained = _paired(subject, ctx, args["task"], args["of"])
        d = stats.rate_at_most(lost + gained, mine.n_tasks, args["fraction"], ctx.alpha,
                               ctx.mode, "flipped answers")
        return Outcome(metric=f"{args['task']} flips", verdict=d.verdict, measured=d.estimate,
                       compared=None, change=None, limit=f"<= {args['fraction']:.2%} of tasks",
                       decision=d, against=other.label, baseline=other.is_baseline,
                       note=_flip_note(lost, gained, mine.n_tasks, other.label), **base)
