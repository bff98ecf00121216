"""Speed and memory checks: llama-bench's throughput tests and peak memory."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_quantcheck import stats
from pytest_quantcheck.baseline import UPDATE_FLAG
from pytest_quantcheck.checks.comparison import Comparisons
from pytest_quantcheck.checks.outcome import (
    CheckArgumentError,
    CheckSkipped,
    Outcome,
    Subject,
)
from pytest_quantcheck.checks.registry import MEMORY, CheckType, Param, speed
from pytest_quantcheck.metrics.memory import MiB
from pytest_quantcheck.metrics.throughput import BenchResult, ThroughputRun

if TYPE_CHECKING:
    from pytest_quantcheck.config import Settings

PHASES = ("pp", "tg")
DEVICES = ("host", "gpu")
PHASE_SIZE = {"pp": "bench_prompt", "tg": "bench_gen"}  # the setting that sizes each test


def _phase_result(run: ThroughputRun, phase: str, name: str) -> BenchResult:
    if phase not in run.tests:
        raise CheckSkipped(f"no {phase} test was run for {name}: {PHASE_SIZE[phase]} is 0")
    return run.tests[phase]


class ThroughputAtLeast(CheckType):
    marker = "throughput_at_least"
    comparison_arg = "pct"
    params = (Param("tokens_per_s", low=0.0, default=None), Param("pct", low=-99.0, default=None),
              Param("of", "target", default="baseline"),
              Param("phase", "choice", default="tg", choices=PHASES))
    exclusive = ("tokens_per_s", "pct")
    summary = ("mean tokens/s of the `pp` or `tg` test at least `tokens_per_s`, or at most `-pct` %"
               " below the baseline measured on this machine (`of=\"baseline\"`) or another variant"
               " of this run (`of=\"Q8_0\"`)")

    def refine(self, args: dict[str, Any], given: set[str]) -> dict[str, Any]:
        if "tokens_per_s" in given:
            if "of" in given:
                raise CheckArgumentError("of= goes with pct=, not with tokens_per_s=")
            return {"tokens_per_s": args["tokens_per_s"], "phase": args["phase"]}
        if args["of"] is None:
            raise CheckArgumentError("of must be a variant name or 'baseline', got None")
        return {"pct": args["pct"], "of": args["of"], "phase": args["phase"]}

    def conflict(self, args: Mapping[str, Any], settings: Settings) -> str | None:
        size = PHASE_SIZE[args["phase"]]
        if getattr(settings, size) == 0:
            return f"needs a {args['phase']} test, but {size} is 0; set {size} above 0"
        return None

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({speed(args["phase"])})

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        first = self._measure(args, subject, ctx, base)
        # Confirm before failing: measure again and fail only if that fails too. The two
        # failing together is a subset of the first failing, so false alarms stay <= alpha.
        if first.verdict != stats.FAIL or not ctx.remeasure(subject, args.get("of")):
            return first
        second = self._measure(args, subject, ctx, base)
        p1 = first.decision.p_value if first.decision else float("nan")
        if second.verdict == stats.FAIL:
            note = f"confirmed by a second measurement (the first: p = {p1:.3g})"
        else:
            note = (f"a first measurement failed (p = {p1:.3g}); the second, taken to confirm it,"
                    f" did not: decided on the second")
        return replace(second, note="; ".join(n for n in (second.note, note) if n))

    def _measure(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        other = None
        if "pct" in args:
            other = ctx.speed_against(subject, args["of"], args["phase"])
        # compared with another variant of this run: the run measured interleaved with it
        run = other.mine if other is not None and other.mine is not None else subject.throughput()
        mine = _phase_result(run, args["phase"], subject.name)
        where = f"measured on {run.fingerprint.summary()}"
        if other is not None and other.mine is not None:
            where += f", repetitions interleaved with {other.label}'s"
        note = "; ".join(n for n in (where, run.roofline() if args["phase"] == "tg" else "") if n)
        if other is None:
            d = stats.mean_at_least(mine.samples, args["tokens_per_s"], ctx.alpha, ctx.mode,
                                    f"{mine.test} repetitions")
            return Outcome(metric=f"{mine.test} t/s", verdict=d.verdict, measured=mine.mean,
                           compared=args["tokens_per_s"], change=None,
                           limit=f">= {args['tokens_per_s']:g} t/s", decision=d, against="limit",
                           note=note, **base)
        if other.result.test != mine.test:
            raise CheckSkipped(f"{other.label} has {other.result.test}, this run measures"
                               f" {mine.test}; set bench_prompt / bench_gen alike to compare")
        ratio = 1 + args["pct"] / 100
        if other.runs:  # a baseline: runs of separate processes, whose drift must count
            if len(other.runs) < stats.MIN_BASELINE_RUNS:
                raise CheckSkipped(
                    f"the {args['phase']} baseline of {subject.name} on this machine holds"
                    f" {len(other.runs)} run(s); comparing with it needs at least"
                    f" {stats.MIN_BASELINE_RUNS} to know how much separate runs drift: record"
                    f" more with {UPDATE_FLAG} (each adds one run; baseline_runs are kept)")
            if any(r.test != mine.test for r in other.runs):
                raise CheckSkipped(f"{other.label} has runs of other tests than {mine.test};"
                                   " set bench_prompt / bench_gen alike to compare")
            d = stats.run_ratio_at_least(mine.samples, [r.samples for r in other.runs], ratio,
                                         ctx.alpha, ctx.mode, f"{mine.test} t/s")
        else:
            d = stats.ratio_at_least(mine.samples, other.result.samples, ratio, ctx.alpha,
                                     ctx.mode, f"{mine.test} t/s")
        compared = other.result.mean
        if other.runs:  # the baseline's level: the geometric mean of its runs' means
            compared = math.exp(sum(float(np.log(r.samples).mean()) for r in other.runs)
                                / len(other.runs))
        return Outcome(metric=f"{mine.test} t/s", verdict=d.verdict, measured=mine.mean,
                       compared=compared, change=math.exp(d.estimate) - 1,
                       limit=f"{args['pct']:+g}%", decision=d, against=other.label,
                       baseline=other.is_baseline, note=note, **base)


class MemoryAtMost(CheckType):
    marker = "memory_at_most"
    params = (Param("mb", low=0.0), Param("device", "choice", default="host", choices=DEVICES))
    summary = ("peak resident memory (`device=\"gpu\"`: GPU memory) of load plus one scored"
               " chunk at most `mb` MiB")

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({MEMORY})

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        usage = subject.memory()
        if args["device"] == "gpu":
            used = usage.gpu_bytes
            if used is None:
                raise CheckSkipped(f"GPU memory of {subject.name} not available: {usage.gpu.note}")
            metric = "GPU MiB"
        else:
            used, metric = usage.peak_bytes, "peak RSS MiB"
        ok = used <= args["mb"] * MiB
        note = f"{usage.describe()}, load plus one scored chunk"
        machine = getattr(subject, "fingerprint", None)
        if machine is not None:
            note += f", on {machine().summary()}"
        return Outcome(metric=metric, verdict=stats.PASS if ok else stats.FAIL,
                       measured=used / MiB, compared=args["mb"], change=None,
                       limit=f"<= {args['mb']:g} MiB", decision=None, against="limit", note=note,
                       **base)
