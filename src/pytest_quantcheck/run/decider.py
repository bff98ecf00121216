"""The one decider of a run: markers' checks and assertion helpers' alike, decided whole, in
looks (:mod:`pytest_quantcheck.sequential`), or together under Holm correction; every check's
fate (passed, failed, inconclusive, skipped, error, recorded) kept as an outcome.

No pytest here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_quantcheck import baseline, exchange, sequential, stats
from pytest_quantcheck.blame import BLAMED_METRICS, culprits
from pytest_quantcheck.checks import (
    Check,
    CheckArgumentError,
    CheckSkipped,
    Outcome,
    apply_holm,
)
from pytest_quantcheck.checks.outcome import ERROR, RECORDED, SKIPPED
from pytest_quantcheck.checks.registry import KL, KL_FROM, MACRO, PPL, tasks_needed, text_of
from pytest_quantcheck.config import Settings
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.exchange import Decided
from pytest_quantcheck.models import Models, QuantModel
from pytest_quantcheck.run.comparands import Comparands
from pytest_quantcheck.sequential import look_alphas, look_schedule

CHUNK_NEEDS = frozenset({PPL, KL, KL_FROM})  # checks decided on chunks: looks can stop them


@dataclass
class CheckedTest:
    """What a test's marker checks came to: failure lines, skip reasons, and the messages to
    attach to the test (JUnit properties)."""

    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Decider:
    """Decides the checks of one run against its :class:`Comparands` and keeps their outcomes."""

    settings: Settings
    models: Models
    comparands: Comparands
    outcomes: list[Outcome] = field(default_factory=list)
    collected: list[tuple[Check, str]] = field(default_factory=list)  # (check, variant)
    # pytest-xdist: a folder of the whole run where workers share decided outcomes (Holm)
    exchange: Path | None = None
    _holm: Decided | None = None

    @property
    def baseline_mode(self) -> str:
        return self.comparands.baseline_mode

    def run_check(self, check: Check, model: QuantModel,
                  where: tuple[str, str, int] = ("", "", 0)) -> Outcome:
        """Decide one collected check (``where``: the test's node id, file and line) at the
        run's alpha and mode, and keep its outcome."""
        outcome = replace(self._decide(check, model, self.settings.alpha, self.settings.mode),
                          nodeid=where[0], file=where[1], line=where[2])
        if self.settings.blame and outcome.verdict == stats.FAIL and outcome.metric.startswith(
                BLAMED_METRICS):  # opt-in: a failing quality check names its culprits
            outcome = replace(outcome, note="; ".join(
                x for x in (outcome.note, _culprits(model)) if x))
        self.record(outcome)
        return outcome

    def decide_helper(self, check: Check, model: QuantModel, alpha: float, mode: str,
                      where: tuple[str, str, int]) -> Outcome:
        """Decide an assertion helper's check on one of the run's models as a marker's is
        decided (in looks, with the same notes), and keep its fate for the reports: an
        outcome, or skipped / error when it raised (the exception goes on to the test)."""
        try:
            if check.compares_with == "baseline":
                raise CheckArgumentError(
                    f"assert_{check.marker} compares two files: pass the other model (a helper"
                    " cannot read the baseline; use the marker for that)")
            outcome = self._decide(check, model, alpha, mode)
        except Exception as exc:
            verdict = SKIPPED if isinstance(exc, CheckSkipped) else ERROR
            self.record(replace(check.undecided(model.name, verdict, str(exc), mode, alpha),
                                nodeid=where[0], file=where[1], line=where[2]))
            raise
        outcome = replace(outcome, nodeid=where[0], file=where[1], line=where[2])
        self.record(outcome)
        return outcome

    def _decide(self, check: Check, model: QuantModel, alpha: float, mode: str) -> Outcome:
        """The one decider of markers and helpers. With Holm correction all collected checks
        are decided together the first time, since an adjusted p-value depends on every
        p-value of the run (a check not collected, a helper's, is decided alone); a chunk- or
        task-based check is otherwise decided in looks, unless ``sequential`` is off."""
        if self._sequential(check):
            return self._in_looks(check, model, alpha, mode)
        if self.settings.correction == "holm":
            if self._holm is None:
                self._holm = self._holm_outcomes()
            found = self._holm.get((check.label, model.name))
            if found is None or (isinstance(found, Outcome)
                                 and (found.alpha, found.mode) != (alpha, mode)):
                return check.evaluate(model, self.comparands.at(alpha, mode))
            if isinstance(found, Exception):
                raise found  # skipped or failed to evaluate: reported at this check's turn
            return found
        return check.evaluate(model, self.comparands.at(alpha, mode))

    def decide_test(self, found: list[Check], model: QuantModel,
                    where: tuple[str, str, int]) -> CheckedTest:
        """Decide one test's marker checks. Each meets one fate, kept for every report: passed,
        failed or inconclusive; skipped, saying why and what to do (a baseline comparison with
        comparisons off, a baseline from another machine); error, one line naming the check
        and the fix; or, when this run writes the baseline, recorded (a check against the
        baseline is not judged against the record being written)."""
        out = CheckedTest()
        for check in found:
            if check.compares_with == "baseline" and self.baseline_mode == "off":
                self._undecided(out, check, model.name, SKIPPED, "baseline comparisons are off;"
                                " run with --quant-baseline", where)
                continue
            try:
                if check.compares_with == "baseline" and self.baseline_mode == "update":
                    outcome = self._recorded(check, model, where)
                    self.record(outcome)
                else:
                    outcome = self.run_check(check, model, where)
            except CheckSkipped as exc:
                self._undecided(out, check, model.name, SKIPPED, str(exc), where)
                continue
            except QuantcheckError as exc:
                self._undecided(out, check, model.name, ERROR, str(exc), where)
                continue
            except Exception as exc:  # a bug, shown with its traceback; its fate is still kept
                self._undecided(out, check, model.name, ERROR, f"{type(exc).__name__}: {exc}",
                                where)
                raise
            out.properties.append((f"quantcheck {check.label}", outcome.message()))
            if not outcome.passed and outcome.verdict != RECORDED:
                out.problems.append(outcome.message())
        if out.skipped:
            out.properties.append(("quantcheck skipped", "; ".join(out.skipped)))
        return out

    def not_decided(self, found: list[Check], variant: str, why: str,
                    where: tuple[str, str, int]) -> None:
        """The checks of a test whose own body failed or was skipped before they ran: kept as
        skipped, so no report counts them as passed or leaves them out."""
        for check in found:
            self.record(replace(check.undecided(variant, SKIPPED, why, self.settings.mode,
                                                self.settings.alpha),
                                nodeid=where[0], file=where[1], line=where[2]))

    def _undecided(self, out: CheckedTest, check: Check, variant: str, verdict: str, reason: str,
                   where: tuple[str, str, int]) -> None:
        outcome = replace(check.undecided(variant, verdict, reason, self.settings.mode,
                                          self.settings.alpha),
                          nodeid=where[0], file=where[1], line=where[2])
        self.record(outcome)
        if verdict == SKIPPED:
            out.skipped.append(f"{check.label}: {reason}")
        else:
            out.problems.append(outcome.message())

    def _recorded(self, check: Check, model: QuantModel, where: tuple[str, str, int]) -> Outcome:
        """A check against the baseline in a run that writes it: what is stored, measured over
        every chunk (a baseline holds them all), and not judged: the record being written is
        no evidence about itself."""
        measured = check.evaluate(model, self.comparands.at())
        reason = f"stored in {self.comparands.baseline_path()} ({baseline.UPDATE_FLAG}); not compared"
        phase = check.args.get("phase")
        if phase is not None and "pct" in check.args:
            runs = self._stored_runs(model.name, phase) + 1
            kept = min(runs, self.settings.baseline_runs)
            need = stats.MIN_BASELINE_RUNS
            reason += (f"; this machine's {phase} baseline holds {kept} run(s) after this one,"
                       + (f" enough for throughput gates (they need {need})" if kept >= need
                          else f" and throughput gates need {need}: record {need - kept} more"
                          f" with {baseline.UPDATE_FLAG}"))
        return replace(measured, verdict=RECORDED, compared=None, change=None, decision=None,
                       against="", p_adjusted=None, reason=reason, n=measured.n,
                       n_available=measured.n,  # a baseline holds every chunk
                       unit=measured.unit, nodeid=where[0], file=where[1], line=where[2])

    def _stored_runs(self, name: str, phase: str) -> int:
        """The ``phase`` throughput runs of ``name`` the baseline file already holds for this
        machine (0 when there is no file, no record, or only other machines')."""
        path = self.comparands.baseline_path()
        if not path.is_file():
            return 0
        try:
            return len(baseline.throughput(
                baseline.load(path), name, self.models.store.speed_keys(),
                self.settings.baseline_ignore, phase, self.models.timings.fingerprint(),
                self.settings.fingerprint_ignore))
        except (QuantcheckError, baseline.MeasuredElsewhere):
            return 0

    def _sequential(self, check: Check) -> bool:
        return (self.settings.sequential and self.settings.correction == "none"
                and text_of(check.needs) != MACRO  # texts of other lengths: decided whole
                and (bool(check.needs & CHUNK_NEEDS) or len(tasks_needed(check.needs)) == 1))

    def _in_looks(self, check: Check, model: QuantModel, alpha: float, mode: str) -> Outcome:
        """``check`` decided in looks (sequential.py) of chunks, or of tasks for a task check:
        the model, and what the check compares with, are decoded (scored) only as far as the
        looks go (every model's decoding is shared by its checks, so a model stops when the last
        of them is decided)."""
        s = self.settings
        if check.needs & CHUNK_NEEDS:
            unit, least, group = "chunks", s.min_chunks, self.models.store.protocol.n_seq
            first = look_schedule(2**31, least, group)[0]
            other = self.comparands.other(check.args["of"]) if KL_FROM in check.needs else None
            n_total = self.models.chunks_available(model, first, text_of(check.needs), other)
        else:
            (task,) = tasks_needed(check.needs)
            unit, least, group = "tasks", s.min_tasks, 1
            first = look_schedule(2**31, least, group)[0]
            n_total = int(self.models.task(model, task, first).task_numbers.size)
        looks = look_schedule(n_total, least, group)

        def evaluate(n: int, level: float, how: str) -> Outcome:
            return check.evaluate(model, self.comparands.at(level, how, n))

        outcome, i = sequential.decide(looks, look_alphas(looks, alpha), mode, evaluate)
        n = looks[i]
        when = f"all {n} {unit}" if n == n_total else f"{n} of {n_total} {unit}"
        note = (f"sequential: decided after {when} (look {i + 1} of {len(looks)}; alpha"
                f" {alpha:g} spent over all looks)")
        return replace(outcome, n_available=n_total,
                       note="; ".join(x for x in (outcome.note, note) if x))

    def record(self, outcome: Outcome) -> None:
        """Keep an outcome for the summary and the reports (markers' and helpers' alike)."""
        self.outcomes.append(outcome)

    def _holm_outcomes(self) -> Decided:
        """Every collected check decided and Holm-adjusted together. Under pytest-xdist each
        variant's checks are evaluated by one worker and shared through :attr:`exchange`, so
        every worker applies the same correction to the same p-values and no model is evaluated
        twice in the run."""
        groups: dict[str, list[Check]] = {}
        for check, spec in self.collected:
            # a check against the baseline is decided only when comparing with a stored one
            if check.compares_with != "baseline" or self.baseline_mode == "compare":
                groups.setdefault(spec, []).append(check)

        def decide(spec: str) -> Decided:
            found: Decided = {}
            name = spec  # outcomes are kept by model name (a .gguf variant's is its stem)
            for check in groups[spec]:
                try:
                    model = self.models.model(spec)
                    name = model.name
                    found[(check.label, name)] = check.evaluate(model, self.comparands.at())
                except Exception as exc:
                    found[(check.label, name)] = exc
            return found

        if self.exchange is None:
            found = {key: value for spec in groups for key, value in decide(spec).items()}
        else:
            found = exchange.share(self.exchange, {
                spec: functools.partial(decide, spec) for spec in groups})
        decided = sorted(k for k, o in found.items() if isinstance(o, Outcome))
        adjusted = apply_holm([found[k] for k in decided])  # type: ignore[misc]
        found.update(zip(decided, adjusted, strict=True))
        return found


def _culprits(model: QuantModel) -> str:
    """The tensor groups behind a failing check (blame, cached per model), or why not."""
    try:
        return culprits(model.blame())
    except QuantcheckError as exc:
        return f"blame: not available ({exc})"
