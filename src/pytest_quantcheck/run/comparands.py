"""What a check compares with, at every chunk (task) or the first n: the run's reference,
another model of the run, or the stored baseline. The checks see it through
:class:`RunComparisons`, this run's implementation of the checks' own
:class:`~pytest_quantcheck.checks.Comparisons` protocol; the decider asks for one a decision
(a look: the first n chunks or tasks).

No pytest here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_quantcheck import baseline
from pytest_quantcheck.checks import Against, CheckSkipped, SpeedAgainst, Subject, TaskAgainst
from pytest_quantcheck.config import Settings
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.metrics.task_answers import TaskResult
from pytest_quantcheck.models import REFERENCE, Models, QuantModel


@dataclass
class Comparands:
    """The other side of every comparison in one run."""

    settings: Settings
    models: Models
    baseline_mode: str = "off"  # "off", "compare" or "update"

    def at(self, alpha: float | None = None, mode: str | None = None,
           n: int | None = None) -> RunComparisons:
        """What one decision rests on: at the run's alpha and mode (a helper passes its own),
        over every chunk and task, or the first ``n`` (a look)."""
        return RunComparisons(self, self.settings.alpha if alpha is None else alpha,
                              self.settings.mode if mode is None else mode, n,
                              tuple(self.models.store.texts()))

    def other(self, of: str | None) -> QuantModel:
        """The model a check's ``of`` names: the run's reference (None, or a helper's
        ``"reference"``), a model of the run by name (a helper's ``of=`` model), or a spec."""
        if of is None or of == REFERENCE:
            return self.models.reference()
        return self.models.named(of)

    def resolve_tensors(self, subject: Any, of: str) -> tuple[str, dict[str, list[str]]]:
        """The baseline's tensor types and hashes of ``subject``, or another model's."""
        if of != "baseline":
            other = self.other(of)
            return other.name, other.tensor_mix().hashes()
        if self.baseline_mode == "update":
            return "baseline (being updated)", subject.tensor_mix().hashes()
        stored = self._stored()
        return (f"baseline {stored.path.name}",
                baseline.tensor_hashes(stored, subject.name, self.models.store.speed_keys(),
                                       self.settings.baseline_ignore))

    def resolve_kl(self, subject: Any, of: str, text: str | None = None,
                   n: int | None = None) -> Any:
        """``subject``'s KL divergence from the model ``of`` names (a variant or a .gguf path),
        on a text, over every chunk or the first ``n`` (a look)."""
        # a look passes as its model
        return self.models.kl_divergence(subject, n, self.other(of), text)

    def remeasure(self, subject: Any, of: str | None) -> None:
        if of in (None, "baseline"):
            self.models.timings.throughput(subject, again=True)
        else:  # a comparison of two variants is measured again as it was: interleaved
            self.models.timings.throughput_pair(subject, self.other(of), again=True)

    def resolve(self, subject: Any, of: str | None, text: str | None = None,
                n: int | None = None) -> Against:
        """What a perplexity check compares with, on a text, over every chunk or the first
        ``n`` (a look)."""
        if of == "baseline":
            stored = self.baseline_against(subject, text)
            return stored if n is None else replace(stored, chunk_nll=stored.chunk_nll[:n])
        other = self.other(of)
        label = f"{other.name} (reference)" if of is None else other.name
        return Against(label, self.models.perplexity(other, n, text).chunk_nll)

    def resolve_speed(self, subject: Any, of: str, phase: str) -> SpeedAgainst:
        if of == "baseline":
            return self.baseline_speed(subject, phase)
        mine, other = self.models.timings.throughput_pair(subject, self.other(of))
        if phase not in other.tests:
            raise CheckSkipped(f"no {phase} test was run for {of}")
        return SpeedAgainst(of, other.tests[phase], mine=mine)

    def resolve_task(self, subject: Any, of: str | None, task: str,
                     n: int | None = None) -> TaskAgainst:
        """What a task check compares with, over every task or the first ``n`` (a look; a
        baseline's are stored whole, and the check pairs the first ``n``)."""
        if of == "baseline":
            return self.baseline_task(subject, task)
        other = self.other(of)
        label = f"{other.name} (reference)" if of is None else other.name
        return TaskAgainst.of(label, self.models.task(other, task, n))

    def baseline_path(self) -> Path:
        return self.settings.baseline_dir / baseline.file_name(self.models.store.base_path().stem)

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
        name = self.models.store.named_text(text)
        if name is None:
            values = baseline.chunk_nll(stored, subject.name, self.models.quality_keys(),
                                        self.settings.baseline_ignore)
        else:
            values = baseline.text_chunk_nll(stored, subject.name, self.models.quality_keys(),
                                             self.settings.baseline_ignore, name,
                                             self.models.store.text_keys(name))
        return Against(f"baseline {stored.path.name}", values, True)

    def baseline_task(self, subject: Any, task: str) -> TaskAgainst:
        if self.baseline_mode == "update":
            return TaskAgainst.of("baseline (being updated)", subject.task(task), True)
        stored = self._stored()
        correct, selection = baseline.task_correct(stored, subject.name, self.models.store.speed_keys(),
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
                stored, subject.name, self.models.store.speed_keys(), self.settings.baseline_ignore,
                phase, self.models.timings.fingerprint(), self.settings.fingerprint_ignore)
        except baseline.MeasuredElsewhere as exc:
            raise CheckSkipped(exc.reason(f"the {phase} throughput baseline of {subject.name}")
                               ) from None
        return SpeedAgainst(f"baseline {stored.path.name}", runs[-1], True, tuple(runs))


def _model(subject: Subject) -> QuantModel:
    if not isinstance(subject, QuantModel):  # checks hand back the subject they were given
        raise TypeError(f"a run decides on its own models, not {subject!r}")
    return subject


@dataclass(frozen=True)
class RunComparisons:
    """The checks' :class:`~pytest_quantcheck.checks.Comparisons` in a run: the subject's
    measurements and the other side of each comparison, over every chunk and task or the first
    ``n`` (a look)."""

    comparands: Comparands
    alpha: float
    mode: str
    n: int | None = None
    texts: tuple[str, ...] = ()

    def perplexity(self, subject: Subject, text: str | None) -> PerplexityResult:
        return self.comparands.models.perplexity(_model(subject), self.n, text)

    def kl_divergence(self, subject: Subject, of: str | None, text: str | None) -> KLDResult:
        if of is None:
            return self.comparands.models.kl_divergence(_model(subject), self.n, text=text)
        result: KLDResult = self.comparands.resolve_kl(subject, of, text, self.n)
        return result

    def task(self, subject: Subject, name: str) -> TaskResult:
        return self.comparands.models.task(_model(subject), name, self.n)

    def perplexity_against(self, subject: Subject, of: str | None,
                           text: str | None) -> Against:
        return self.comparands.resolve(subject, of, text, self.n)

    def task_against(self, subject: Subject, of: str | None, task: str) -> TaskAgainst:
        return self.comparands.resolve_task(subject, of, task, self.n)

    def speed_against(self, subject: Subject, of: str, phase: str) -> SpeedAgainst:
        return self.comparands.resolve_speed(subject, of, phase)

    def remeasure(self, subject: Subject, of: str | None) -> bool:
        """Throughput is measured again only in a whole decision (looks are for chunks and
        tasks) and with ``throughput_confirm`` on."""
        if self.n is not None or not self.comparands.settings.throughput_confirm:
            return False
        self.comparands.remeasure(subject, of)
        return True

    def tensors_against(self, subject: Subject, of: str) -> tuple[str, dict[str, list[str]]]:
        return self.comparands.resolve_tensors(subject, of)
