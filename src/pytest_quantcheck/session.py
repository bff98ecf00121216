"""One quantcheck run: its models (:class:`~pytest_quantcheck.models.Models`), the checks it
collected, their outcomes (markers' and assertion helpers' alike), the run-wide Holm correction,
the payload a pytest-xdist worker sends and its merge on the controller, and what the run leaves
behind: the baseline file and the reports. Lives in ``config.stash``; knows nothing of pytest, so
it is unit-tested directly and :mod:`pytest_quantcheck.plugin` only translates hooks into calls.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_quantcheck import baseline, exchange, report, sequential, stats
from pytest_quantcheck.backends import Backend
from pytest_quantcheck.checks import (
    Against,
    Check,
    CheckArgumentError,
    CheckSkipped,
    Context,
    Outcome,
    SpeedAgainst,
    TaskAgainst,
    apply_holm,
)
from pytest_quantcheck.checks.outcome import ERROR, RECORDED, SKIPPED
from pytest_quantcheck.checks.registry import KL, KL_FROM, MACRO, PPL, tasks_needed, text_of
from pytest_quantcheck.config import Settings
from pytest_quantcheck.demo.tasks import task_specs
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.exchange import Decided
from pytest_quantcheck.metrics.tasks import Z95
from pytest_quantcheck.models import REFERENCE, Models, QuantModel
from pytest_quantcheck.sequential import look_alphas, look_schedule
from pytest_quantcheck.tensor_mix import identical_notices

BaselinePayload = tuple[dict[str, Any], dict[str, dict[str, Any]]]  # keys, records by variant


@dataclass(frozen=True)
class ReportPaths:
    """Where the reports of a run go; ``None``: not asked for."""

    json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None
    plot: Path | None = None
    github: bool = False  # under GitHub Actions: step summary and annotations


@dataclass
class CheckedTest:
    """What a test's marker checks came to: failure lines, skip reasons, and the messages to
    attach to the test (JUnit properties)."""

    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)


CHUNK_NEEDS = frozenset({PPL, KL, KL_FROM})  # checks decided on chunks: looks can stop them


class _Look:
    """A model as a look sees it: its perplexity and KL divergence over the first ``n`` chunks,
    or its answers to the first ``n`` tasks of a set (a check looks at chunks or at tasks)."""

    def __init__(self, model: QuantModel, n: int) -> None:
        self._model, self._n = model, n

    def perplexity(self, text: str | None = None) -> Any:
        return self._model.models.perplexity(self._model, self._n, text)

    def kl_divergence(self, reference: QuantModel | None = None, text: str | None = None) -> Any:
        return self._model.models.kl_divergence(self._model, self._n, reference, text)

    def task(self, name: str) -> Any:
        return self._model.models.task(self._model, name, self._n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _standard_error(values: Any) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def _around(key: str, value: float, se: float) -> dict[str, float]:
    """A plotted value and its 95 % interval (normal), as ``key``, ``key_low``, ``key_high``."""
    return {key: value, f"{key}_low": value - Z95 * se, f"{key}_high": value + Z95 * se}


@dataclass
class QuantSession:
    settings: Settings
    backend_factory: Callable[[], Backend]
    baseline_mode: str = "off"  # "off", "compare" or "update"
    outcomes: list[Outcome] = field(default_factory=list)
    collected: list[tuple[Check, str]] = field(default_factory=list)  # (check, variant)
    notes: list[tuple[str, bool]] = field(default_factory=list)  # (text, is_error), shown last
    annotations: list[str] = field(default_factory=list)  # GitHub workflow commands to print
    models: Models = field(init=False)
    shard: tuple[int, int] | None = None  # (K, N): this run decides the K-th of N shards
    # pytest-xdist: a folder of the whole run where workers share decided outcomes (Holm)
    exchange: Path | None = None
    _holm: Decided | None = None
    _merged_baselines: list[BaselinePayload] = field(default_factory=list)
    _merged_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    _document: BaselinePayload | None = None
    _merged_models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models = Models(self.settings, self.backend_factory, decide=self.decide_helper)

    def variants(self) -> tuple[str, ...]:
        """The variants this run checks: all of them, or its shard's (every N-th, from K)."""
        if self.shard is None:
            return self.settings.variants
        k, n = self.shard
        return tuple(v for i, v in enumerate(self.settings.variants) if i % n == k - 1)

    @property
    def steps(self) -> list[str]:
        return self.models.steps

    # ---- models and checks -------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.models.engine

    def base_path(self) -> Path:
        """The base model's file (the built-in demo model's, built once, if none is set)."""
        return self.models.base_path()

    def eval_text(self) -> Path:
        return self.models.eval_text()

    def model(self, spec: str) -> QuantModel:
        """``base``, a llama.cpp file type, or a path to a .gguf file."""
        return self.models.model(spec)

    def reference(self) -> QuantModel:
        return self.models.reference()

    def collect(self, checks: list[tuple[Check, str]]) -> None:
        """The checks this run will decide, each with its variant: the plan of every model's
        passes comes from what they need."""
        self.collected = list(checks)
        self.models.plan((variant, check.needs) for check, variant in checks)

    def context(self, alpha: float | None = None, mode: str | None = None,
                n: int | None = None) -> Context:
        """What a check compares with: at the run's alpha and mode (a helper passes its own),
        over every chunk and task, or the first ``n`` (a look; throughput is not re-measured
        inside a look)."""
        level = self.settings.alpha if alpha is None else alpha
        how = self.settings.mode if mode is None else mode
        if n is not None:
            return Context(level, how, functools.partial(self.resolve, n=n), self.resolve_speed,
                           None, functools.partial(self.resolve_task, n=n),
                           functools.partial(self.resolve_kl, n=n), texts=self.models.texts())
        return Context(level, how, self.resolve, self.resolve_speed,
                       self.remeasure if self.settings.throughput_confirm else None,
                       self.resolve_task, self.resolve_kl, self.resolve_tensors,
                       self.models.texts())

    def _other(self, of: str | None) -> QuantModel:
        """The model a check's ``of`` names: the run's reference (None, or a helper's
        ``"reference"``), a model of the run by name (a helper's ``of=`` model), or a spec."""
        if of is None or of == REFERENCE:
            return self.reference()
        return self.models.named(of)

    def resolve_tensors(self, subject: Any, of: str) -> tuple[str, dict[str, list[str]]]:
        """The baseline's tensor types and hashes of ``subject``, or another model's."""
        if of != "baseline":
            other = self._other(of)
            return other.name, other.tensor_mix().hashes()
        if self.baseline_mode == "update":
            return "baseline (being updated)", subject.tensor_mix().hashes()
        stored = self._stored()
        return (f"baseline {stored.path.name}",
                baseline.tensor_hashes(stored, subject.name, self.models.speed_keys(),
                                       self.settings.baseline_ignore))

    def resolve_kl(self, subject: Any, of: str, text: str | None = None,
                   n: int | None = None) -> Any:
        """``subject``'s KL divergence from the model ``of`` names (a variant or a .gguf path),
        on a text, over every chunk or the first ``n`` (a look)."""
        # a look passes as its model
        return self.models.kl_divergence(subject, n, self._other(of), text)

    def remeasure(self, subject: Any, of: str | None) -> None:
        if of in (None, "baseline"):
            self.models.throughput(subject, again=True)
        else:  # a comparison of two variants is measured again as it was: interleaved
            self.models.throughput_pair(subject, self._other(of), again=True)

    def resolve(self, subject: Any, of: str | None, text: str | None = None,
                n: int | None = None) -> Against:
        """What a perplexity check compares with, on a text, over every chunk or the first
        ``n`` (a look)."""
        if of == "baseline":
            stored = self.baseline_against(subject, text)
            return stored if n is None else replace(stored, chunk_nll=stored.chunk_nll[:n])
        other = self._other(of)
        label = f"{other.name} (reference)" if of is None else other.name
        return Against(label, self.models.perplexity(other, n, text).chunk_nll)

    def resolve_speed(self, subject: Any, of: str, phase: str) -> SpeedAgainst:
        if of == "baseline":
            return self.baseline_speed(subject, phase)
        mine, other = self.models.throughput_pair(subject, self._other(of))
        if phase not in other.tests:
            raise CheckSkipped(f"no {phase} test was run for {of}")
        return SpeedAgainst(of, other.tests[phase], mine=mine)

    def resolve_task(self, subject: Any, of: str | None, task: str,
                     n: int | None = None) -> TaskAgainst:
        """What a task check compares with, over every task or the first ``n`` (a look; a
        baseline's are stored whole, and the check pairs the first ``n``)."""
        if of == "baseline":
            return self.baseline_task(subject, task)
        other = self._other(of)
        label = f"{other.name} (reference)" if of is None else other.name
        return TaskAgainst.of(label, self.models.task(other, task, n))

    def run_check(self, check: Check, model: QuantModel,
                  where: tuple[str, str, int] = ("", "", 0)) -> Outcome:
        """Decide one collected check (``where``: the test's node id, file and line) at the
        run's alpha and mode, and keep its outcome."""
        outcome = replace(self._decide(check, model, self.settings.alpha, self.settings.mode),
                          nodeid=where[0], file=where[1], line=where[2])
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
                return check.evaluate(model, self.context(alpha, mode))
            if isinstance(found, Exception):
                raise found  # skipped or failed to evaluate: reported at this check's turn
            return found
        return check.evaluate(model, self.context(alpha, mode))

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
        measured = check.evaluate(model, self.context())
        reason = f"stored in {self.baseline_path()} ({baseline.UPDATE_FLAG}); not compared"
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
        path = self.baseline_path()
        if not path.is_file():
            return 0
        try:
            return len(baseline.throughput(
                baseline.load(path), name, self.models.speed_keys(),
                self.settings.baseline_ignore, phase, self.models.fingerprint(),
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
            unit, least, group = "chunks", s.min_chunks, self.models.protocol.n_seq
            first = look_schedule(2**31, least, group)[0]
            other = self._other(check.args["of"]) if KL_FROM in check.needs else None
            n_total = self.models.chunks_available(model, first, text_of(check.needs), other)
        else:
            (task,) = tasks_needed(check.needs)
            unit, least, group = "tasks", s.min_tasks, 1
            first = look_schedule(2**31, least, group)[0]
            n_total = int(self.models.task(model, task, first).task_numbers.size)
        looks = look_schedule(n_total, least, group)

        def evaluate(n: int, level: float, how: str) -> Outcome:
            return check.evaluate(_Look(model, n), self.context(level, how, n))

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
                    model = self.model(spec)
                    name = model.name
                    found[(check.label, name)] = check.evaluate(model, self.context())
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

    # ---- baselines ---------------------------------------------------------------------------

    def baseline_path(self) -> Path:
        return self.settings.baseline_dir / baseline.file_name(self.base_path().stem)

    def _stored(self) -> baseline.BaselineFile:
        if self.baseline_mode == "off":
            raise baseline.BaselineError(
                "comparison with the baseline is off; run pytest with --quant-baseline")
        return baseline.load(self.baseline_path())

    def baseline_against(self, subject: Any, text: str | None = None) -> Against:
        """The baseline's per-chunk NLL of ``subject`` on the default text or a named one."""
        if self.baseline_mode == "update":
            # Being rewritten from this run's numbers: compare with them.
            res = subject.perplexity() if text is None else subject.perplexity(text)
            return Against("baseline (being updated)", res.chunk_nll, True)
        stored = self._stored()
        name = self.models.named_text(text)
        if name is None:
            values = baseline.chunk_nll(stored, subject.name, self.models.quality_keys(),
                                        self.settings.baseline_ignore)
        else:
            values = baseline.text_chunk_nll(stored, subject.name, self.models.quality_keys(),
                                             self.settings.baseline_ignore, name,
                                             self.models.text_keys(name))
        return Against(f"baseline {stored.path.name}", values, True)

    def baseline_task(self, subject: Any, task: str) -> TaskAgainst:
        if self.baseline_mode == "update":
            return TaskAgainst.of("baseline (being updated)", subject.task(task), True)
        stored = self._stored()
        correct, selection = baseline.task_correct(stored, subject.name, self.models.speed_keys(),
                                                   self.settings.baseline_ignore, task)
        return TaskAgainst(f"baseline {stored.path.name}", correct, selection, True)

    def baseline_speed(self, subject: Any, phase: str) -> SpeedAgainst:
        """The stored throughput of ``subject`` measured on a machine like this one; a check
        against a baseline from another machine is skipped, with the differences as reason."""
        if self.baseline_mode == "update":
            return SpeedAgainst("baseline (being updated)", subject.throughput().tests[phase], True)
        stored = self._stored()
        try:
            runs = baseline.throughput(
                stored, subject.name, self.models.speed_keys(), self.settings.baseline_ignore,
                phase, self.models.fingerprint(), self.settings.fingerprint_ignore)
        except baseline.MeasuredElsewhere as exc:
            raise CheckSkipped(exc.reason(f"the {phase} throughput baseline of {subject.name}")
                               ) from None
        return SpeedAgainst(f"baseline {stored.path.name}", runs[-1], True, tuple(runs))

    def baseline_payload(self) -> BaselinePayload | None:
        """Keys and records of every model this process measured, for the baseline file."""
        m = self.models
        measured = m.measured()
        if not measured:
            return None
        records = {}
        for name, model in measured.items():
            has_speed = name in m.speed or name in m.memory_usage
            records[name] = baseline.make_record(
                file_type=model.file_type, size_bytes=model.size_bytes,
                bits_per_weight=model.bits_per_weight,
                # a baseline holds every chunk: a model decided early is decoded to the end
                ppl=m.perplexity(model) if m.has_quality(name) else None,
                kld=m.kl_divergence(model) if m.has_kl(name) else None,
                fingerprint=m.fingerprint() if has_speed else None,
                speed=m.speed.get(name), memory=m.memory_usage.get(name),
                tasks=m.tasks_of(name, complete=True), tensors=m.tensor_mix(model).hashes(),
                texts={t: (m.text_keys(t)["text_sha256"], m.perplexity(model, None, t))
                       for t in m.texts_of(name)})
        return m.quality_keys(), records

    # ---- across processes --------------------------------------------------------------------

    def points(self) -> dict[str, dict[str, Any]]:
        """Size, quality and speed of every model measured so far, for the trade-off plots:
        per-chunk NLL and KL divergence as decoded (a model decided early has fewer chunks;
        :func:`report.over_common_chunks` puts every model on the same ones), tokens/s and task
        accuracy with their counts."""
        m = self.models
        out = dict(self._merged_points)
        for name, model in m.measured().items():
            point: dict[str, Any] = {"bits_per_weight": model.bits_per_weight,
                                     "size_bytes": model.size_bytes}
            used = m.chunks_used(name)  # what this run decoded, perhaps stopped early
            if m.has_quality(name):
                point["chunk_nll"] = m.perplexity(model, used).chunk_nll.tolist()
            if m.has_kl(name):
                point["chunk_kld"] = m.kl_divergence(model, used).chunk_kld.tolist()
            for phase, result in m.speed[name].tests.items() if name in m.speed else ():
                point.update(_around(f"{phase}_tokens_per_s", result.mean,
                                     _standard_error(result.samples)))
                point[f"{phase}_repetitions"] = int(result.samples.size)
            for task, scored in m.tasks_of(name).items():
                point[f"{task}_accuracy"] = scored.accuracy
                point[f"{task}_tasks"] = scored.n_tasks
            out[name] = point
        return out

    def worker_payload(self) -> str:
        """What a pytest-xdist worker sends the controller: outcomes, steps, plot points, notes
        (what collection found to say) and, when updating, its baseline records."""
        payload = self.baseline_payload() if self.baseline_mode == "update" else None
        return json.dumps({"outcomes": [o.to_dict() for o in self.outcomes], "baseline": payload,
                           "points": self.points(), "steps": self.steps,
                           "models": self.models.model_table(), "notes": self.notes},
                          default=str)

    def merge(self, data: str, worker: str = "worker") -> None:
        """Take in a worker's payload (on the controller)."""
        payload = json.loads(data)
        self.outcomes.extend(Outcome.from_dict(o) for o in payload["outcomes"])
        self.steps.extend(f"[{worker}] {step}" for step in payload.get("steps", []))
        # every worker collects every test, so each sends the same collection notices: one each
        for text, red in payload.get("notes", []):
            if (text, red) not in self.notes:
                self.notes.append((str(text), bool(red)))
        self._merged_points.update(payload.get("points", {}))
        self._merged_models.update(payload.get("models", {}))
        if payload.get("baseline"):
            keys, records = payload["baseline"]
            self._merged_baselines.append((keys, records))

    # ---- the end of the run ------------------------------------------------------------------

    def model_table(self) -> dict[str, dict[str, Any]]:
        """Per model of the run (every worker's): chunks decoded, taken from the result cache,
        looked at, and seconds of decoding."""
        return {**self._merged_models, **self.models.model_table()}

    def tensor_notes(self) -> list[str]:
        """What llama.cpp wrote that a user should know: variants holding identical tensors,
        and tensors that fell back from the file type's block type."""
        table = self.model_table()
        digests = {name: str(row["tensor_data_sha256"]) for name, row in table.items()
                   if row.get("tensor_data_sha256")}
        return [*identical_notices(digests),
                *(str(row["fallback"]) for _name, row in sorted(table.items())
                  if row.get("fallback"))]

    def cache_note(self) -> str | None:
        """Which models' per-chunk results and task answers came from the result cache, for
        the summary."""
        cached = {name: row for name, row in self.model_table().items()
                  if row["chunks_from_cache"] or row.get("tasks_from_cache")}
        if not cached:
            return None
        parts = []
        for name, row in sorted(cached.items()):
            what = []
            if row["chunks_from_cache"]:
                what.append(f"{row['chunks_from_cache']} of {row['chunks_used']} chunks")
            if row.get("tasks_from_cache"):
                what.append(f"{row['tasks_from_cache']} task answers")
            parts.append(f"{name} ({', '.join(what)})")
        return "results from the cache: " + ", ".join(parts)

    def settings_summary(self) -> dict[str, Any]:
        summary = {k: (str(v) if isinstance(v, Path) else v)
                   for k, v in self.settings.__dict__.items()
                   if k not in ("sources", "bases", "tasks", "recipes")}
        summary["recipes"] = {name: r.describe() for name, r in self.settings.recipes.items()}
        summary["tasks"] = {name: {"file": str(spec.file), "mode": spec.mode, "limit": spec.limit}
                            for name, spec in task_specs(self.settings).items()}
        if self.shard is not None:
            summary["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return summary

    def baseline_document(self) -> BaselinePayload | None:
        """Keys and records of every model measured in the run (this process's and every merged
        worker's), when updating the baseline. Made once, at the end of the run: the baseline
        file and the JSON report both use it, and its keys hash the evaluation text."""
        if self.baseline_mode != "update":
            return None
        if self._document is None:
            batches = list(self._merged_baselines)
            own = self.baseline_payload()
            if own is not None:
                batches.append(own)
            if not batches:
                return None
            self._document = baseline.merge_documents(batches, self.settings.baseline_runs)
        return self._document

    def write_baseline(self) -> bool:
        """Write the baseline once, from the records of this process and every merged worker,
        when updating; :attr:`notes` say what happened. False if it could not be written."""
        document = self.baseline_document()
        if document is None:
            return True
        keys, records = document
        path = self.baseline_path()
        try:
            kept_aside = baseline.update(path, keys, records, self.settings.baseline_runs)
        except baseline.BaselineError as exc:  # said plainly, and the run fails; no traceback
            self.notes.append((f"error: {exc}", True))
            return False
        if kept_aside is not None:
            self.notes.append((f"{path} was not a readable baseline; it was moved to {kept_aside}",
                               True))
        self.notes.append((f"baseline written to {path}", False))
        return True

    def _baseline_for_report(self) -> dict[str, Any] | None:
        document = self.baseline_document()
        if document is None:
            return None
        return {"file": self.baseline_path().name, "keys": document[0], "records": document[1]}

    def write_reports(self, to: ReportPaths) -> list[str]:
        """Write the reports asked for; returns the GitHub annotations to print (each must
        start a line of the log, which only the caller's terminal knows how to ensure)."""
        outcomes = self.outcomes
        texts: dict[Path | None, Callable[[], str]] = {
            to.json: lambda: report.to_json(outcomes, self.settings_summary(),
                                            self._baseline_for_report(), self.model_table()),
            to.markdown: lambda: report.markdown(outcomes, self.model_table(),
                                                 self.tensor_notes())}
        for target, text in texts.items():
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text())
        if to.junit is not None:
            report.write_junit(to.junit, outcomes)
        points = self.points()
        if to.plot is not None and points:
            report.plot_tradeoffs(to.plot, report.over_common_chunks(points),
                                  report.verdicts(outcomes))
        if to.github and outcomes:
            summary = os.environ.get("GITHUB_STEP_SUMMARY")
            if summary:
                with open(summary, "a", encoding="utf-8") as f:
                    f.write(report.markdown(outcomes, self.model_table(), self.tensor_notes()))
            return report.github_annotations(outcomes)
        return []
