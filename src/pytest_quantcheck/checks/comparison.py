"""What a check is decided on beyond its subject's file: the subject's measurements and the other
side of each comparison, over the chunks and tasks of one decision (every one, or the first n of a
sequential look).

Checks see the world through :class:`Comparisons` only. A run implements it
(:class:`pytest_quantcheck.run.comparands.RunComparisons`: the run's reference, another model of
the run, the stored baseline, at a look's length); :class:`OwnMeasurements` implements it from
models' own methods (an assertion helper on models outside a run, a test's models). No pytest
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pytest_quantcheck.checks.outcome import (
    Against,
    CheckArgumentError,
    SpeedAgainst,
    Subject,
    TaskAgainst,
)
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.metrics.task_answers import TaskResult


class Comparisons(Protocol):
    """The measurements of one decision, at its alpha and mode.

    ``of`` is what a check's ``of=`` argument holds: None for the run's reference, a model's
    name, or ``"baseline"``. ``text`` is a named evaluation text (None: the default)."""

    @property
    def alpha(self) -> float: ...

    @property
    def mode(self) -> str: ...

    @property
    def texts(self) -> tuple[str, ...]:
        """The named evaluation texts (``text="macro"`` averages over them)."""
        ...

    def perplexity(self, subject: Subject, text: str | None) -> PerplexityResult:
        """The subject's perplexity."""
        ...

    def kl_divergence(self, subject: Subject, of: str | None, text: str | None) -> KLDResult:
        """The subject's KL divergence from the reference, or from the model ``of`` names."""
        ...

    def task(self, subject: Subject, name: str) -> TaskResult:
        """The subject's answers on the task set ``name``."""
        ...

    def perplexity_against(self, subject: Subject, of: str | None,
                           text: str | None) -> Against:
        """The per-chunk NLL a perplexity check compares the subject's with."""
        ...

    def task_against(self, subject: Subject, of: str | None, task: str) -> TaskAgainst:
        """The per-task correctness a task check compares the subject's with."""
        ...

    def speed_against(self, subject: Subject, of: str, phase: str) -> SpeedAgainst:
        """The throughput a relative throughput check compares the subject's with."""
        ...

    def remeasure(self, subject: Subject, of: str | None) -> bool:
        """Measure the throughput again (the subject's, and ``of``'s when it names a model), to
        confirm a failing check before it fails; False where a failure stands as measured."""
        ...

    def tensors_against(self, subject: Subject, of: str) -> tuple[str, dict[str, list[str]]]:
        """What to call the other file, and its tensor types and hashes."""
        ...


class MeasuredModel(Subject, Protocol):
    """A model that measures itself (a fixture's model, or a test's)."""

    def perplexity(self, text: str | None = None) -> PerplexityResult: ...

    def kl_divergence(self, reference: Any = None, text: str | None = None) -> KLDResult: ...

    def task(self, name: str) -> TaskResult: ...


@dataclass(frozen=True)
class OwnMeasurements:
    """:class:`Comparisons` from the models' own methods: the subject's measurements, compared
    with ``other`` (or, if None, the subject's ``reference()``). Nothing is re-measured and no
    baseline is read (a marker does that)."""

    alpha: float = 0.05
    mode: str = "detect"
    other: Any = None  # a MeasuredModel
    texts: tuple[str, ...] = ()

    def _other(self, subject: Subject) -> Any:
        if self.other is not None:
            return self.other
        reference = getattr(subject, "reference", None)
        if reference is None:
            raise CheckArgumentError(f"{subject.name} has no reference model to compare with;"
                                     " pass the model to compare with")
        return reference()

    def perplexity(self, subject: Any, text: str | None) -> PerplexityResult:
        result: PerplexityResult = (subject.perplexity() if text is None
                                    else subject.perplexity(text))
        return result

    def kl_divergence(self, subject: Any, of: str | None, text: str | None) -> KLDResult:
        reference = None if of is None and self.other is None else self._other(subject)
        result: KLDResult = subject.kl_divergence(reference, text=text)
        return result

    def task(self, subject: Any, name: str) -> TaskResult:
        result: TaskResult = subject.task(name)
        return result

    def perplexity_against(self, subject: Subject, of: str | None,
                           text: str | None) -> Against:
        other = self._other(subject)
        return Against(other.name, self.perplexity(other, text).chunk_nll)

    def task_against(self, subject: Subject, of: str | None, task: str) -> TaskAgainst:
        other = self._other(subject)
        return TaskAgainst.of(other.name, self.task(other, task))

    def speed_against(self, subject: Subject, of: str, phase: str) -> SpeedAgainst:
        other = self._other(subject)
        tests = other.throughput().tests
        if phase not in tests:
            raise CheckArgumentError(f"{other.name} has no {phase} throughput test")
        return SpeedAgainst(other.name, tests[phase])

    def remeasure(self, subject: Subject, of: str | None) -> bool:
        return False

    def tensors_against(self, subject: Subject, of: str) -> tuple[str, dict[str, list[str]]]:
        if self.other is None:
            raise CheckArgumentError(
                "tensors_unchanged compares two files: pass the other model (only the marker"
                " reads the baseline)")
        return self.other.name, self.other.tensor_mix().hashes()
