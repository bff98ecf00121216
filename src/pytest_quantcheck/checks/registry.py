"""The check registry: one class per marker declares its name, its arguments, what it needs from a
model, how it is decided and what its message says.

Everything else is derived from the registry: marker registration and the ini ``markers`` lines
(:func:`marker_lines`), the docs' marker table (:func:`marker_table`, checked by a test), the
assertion helpers (:mod:`pytest_quantcheck.assertions`) and the session's plan of which passes a
model needs (:attr:`Check.needs`). A new metric is a new :class:`CheckType` subclass and its tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_quantcheck.checks.outcome import CheckArgumentError, Outcome, Subject

if TYPE_CHECKING:
    from pytest_quantcheck.checks.comparison import Comparisons
    from pytest_quantcheck.config import Settings

class Need(str):
    """What a check needs from a model, as a typed value: a pass (``PPL``, ``KL``, ``SIZE``...)
    or one of a kind named by ``name`` (a throughput phase, a task set, an evaluation text). It
    is a ``str`` equal to its old spelling (``"speed:tg"``), so a check written against plain
    strings (``frozenset({"size"})``) keeps working; the run reads ``kind`` and ``name``, never
    parses the text."""

    kind: str
    name: str | None

    def __new__(cls, kind: str, name: str | None = None) -> Need:
        need = super().__new__(cls, kind if name is None else f"{kind}:{name}")
        need.kind, need.name = kind, name
        return need

    def __reduce__(self) -> tuple[type[Need], tuple[str, str | None]]:
        return Need, (self.kind, self.name)


# What a check needs from a model: the run plans each model's passes from these.
PPL, KL, MEMORY, SIZE = Need("ppl"), Need("kl"), Need("memory"), Need("size")
KL_FROM = Need("kl_from")  # a KL pass against another model than the reference (a check's of=)


def speed(phase: str) -> Need:
    return Need("speed", phase)


def task_need(name: str) -> Need:
    """The need of a check on the task set ``name`` (from the ``tasks`` setting)."""
    return Need("task", name)


MACRO = "macro"  # text= value: every evaluation text, macro-averaged


def text_need(text: str | None) -> frozenset[str]:
    """The need that names the evaluation text a check is decided on (none: the default)."""
    return frozenset() if text is None else frozenset({Need("text", text)})


def _named(needs: frozenset[str], kind: str) -> list[str]:
    return [n.name for n in needs if isinstance(n, Need) and n.kind == kind and n.name]


def text_of(needs: frozenset[str]) -> str | None:
    """The evaluation text named by ``needs`` (None: the default; MACRO: every text)."""
    return next(iter(_named(needs, "text")), None)


def tasks_needed(needs: frozenset[str]) -> list[str]:
    """The task sets named by ``needs``."""
    return sorted(_named(needs, "task"))


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One argument of a check: a number (with bounds), one of ``choices``, a ``target`` (a
    variant name or ``"baseline"``), a ``model`` (a variant name or a ``.gguf`` path, not the
    baseline), or a ``name`` (a task set's, from the settings)."""

    name: str
    kind: str = "number"  # "number", "choice", "target", "model" or "name"
    default: Any = _REQUIRED
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    positional: bool = True  # False: by keyword only

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def validate(self, value: Any) -> Any:
        __tracebackhide__ = True  # a bad argument's error points at the user's call, not here
        if self.kind == "choice":
            if value not in self.choices:
                raise CheckArgumentError(
                    f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        if self.kind == "name":
            if not isinstance(value, str) or not value:
                raise CheckArgumentError(f"{self.name} must be a name, got {value!r}")
            return value
        if self.kind == "target":
            if value is not None and (not isinstance(value, str) or not value):
                raise CheckArgumentError(
                    f"{self.name} must be a variant name or 'baseline', got {value!r}")
            return value
        if self.kind == "model":
            if value is not None and (not isinstance(value, str) or not value
                                      or value == "baseline"):
                raise CheckArgumentError(
                    f"{self.name} must be a variant name or a .gguf path, got {value!r} (a"
                    " baseline keeps no log-probabilities to take a KL divergence from)")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CheckArgumentError(f"{self.name} must be a number, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            bounds = f">= {self.low}" if self.high is None else f"between {self.low} and {self.high}"
            raise CheckArgumentError(f"{self.name} must be {bounds}, got {value!r}")
        return float(value)

    def shown(self) -> str:
        if self.required:
            return self.name
        default = json.dumps(self.default) if isinstance(self.default, str) else repr(self.default)
        return f"{self.name}={default}"


class CheckType:
    """A kind of check. Subclasses set the class attributes and implement :meth:`evaluate`;
    defining one that sets ``marker`` registers it."""

    marker: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]
    summary: ClassVar[str]  # "passes when ...", Markdown (the marker table of the docs' reference page)
    exclusive: ClassVar[tuple[str, ...]] = ()  # exactly one of these must be given
    # The argument that makes the check compare with another model, named by ``of`` (a
    # variant, "baseline", or None for the reference); None: the check compares with nothing.
    comparison_arg: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "marker" not in cls.__dict__:  # a shared base of several checks, not a check
            return
        if cls.marker in REGISTRY:
            raise TypeError(f"two checks are named {cls.marker!r}")
        REGISTRY[cls.marker] = cls()

    # ---- arguments ------------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments by name, validated; errors name the bad keyword and the allowed ones."""
        __tracebackhide__ = True
        names = tuple(p.name for p in self.params)
        positional = tuple(p.name for p in self.params if p.positional)
        if len(args) > len(positional):
            raise CheckArgumentError(
                f"{self.marker} takes at most {len(positional)} positional argument(s)")
        bound = dict(zip(positional, args, strict=False))
        for key, value in kwargs.items():
            if key not in names:
                raise CheckArgumentError(
                    f"{self.marker} got an unknown keyword {key!r}; allowed: {', '.join(names)}")
            if key in bound:
                raise CheckArgumentError(f"{self.marker} got {key!r} twice")
            bound[key] = value
        if self.exclusive and sum(n in bound for n in self.exclusive) != 1:
            given = " or ".join(f"{n}=" for n in self.exclusive)
            raise CheckArgumentError(f"{self.marker} takes exactly one of {given}")
        missing = [p.name for p in self.params if p.required and p.name not in bound
                   and p.name not in self.exclusive]
        if missing:
            raise CheckArgumentError(f"{self.marker} needs {', '.join(missing)}")
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in bound:
                out[p.name] = p.validate(bound[p.name])
            elif not p.required:
                out[p.name] = p.default
        return self.refine(out, given=set(bound))

    def refine(self, args: dict[str, Any], given: set[str]) -> dict[str, Any]:
        """Rules between arguments; ``given`` names those the caller passed."""
        return args

    def signature(self) -> str:
        parts: list[str] = []
        for p in self.params:
            if p.name in self.exclusive:
                if p.name == self.exclusive[0]:
                    parts.append(" | ".join(f"{n}=..." for n in self.exclusive))
                continue
            parts.append(p.shown())
        return f"{self.marker}({', '.join(parts)})"

    def conflict(self, args: Mapping[str, Any], settings: Settings) -> str | None:
        """Why these arguments cannot be decided under ``settings`` (a usage error), if so."""
        return None

    # ---- evaluation -----------------------------------------------------------------------

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        """What a model must have computed for this check (``PPL``, ``KL``, ``speed("tg")``...)."""
        raise NotImplementedError

    def compares_with(self, args: Mapping[str, Any]) -> str | None:
        """The variant name or ``"baseline"`` this check compares with, if any."""
        if self.comparison_arg is None or self.comparison_arg not in args:
            return None
        of: str | None = args.get("of")
        return of

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        """Decide the check; ``base`` holds the fields every outcome shares."""
        raise NotImplementedError


REGISTRY: dict[str, CheckType] = {}


def _arg(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if float(value).is_integer() and abs(value) >= 1e5:  # sizes in bytes: every digit
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class Check:
    """A parsed marker (or assertion helper call): its kind and validated arguments."""

    marker: str
    args: dict[str, Any]

    @property
    def kind(self) -> CheckType:
        return REGISTRY[self.marker]

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={_arg(v)}" for k, v in self.args.items() if v is not None)
        return f"{self.marker}({inner})"

    @property
    def needs(self) -> frozenset[str]:
        return self.kind.needs(self.args)

    @property
    def compares_with(self) -> str | None:
        return self.kind.compares_with(self.args)

    def evaluate(self, subject: Subject, ctx: Comparisons) -> Outcome:
        __tracebackhide__ = True
        base = {"check": self.label, "variant": subject.name, "mode": ctx.mode, "alpha": ctx.alpha}
        outcome = self.kind.evaluate(self.args, subject, ctx, base)
        text = self.args.get("text")
        return outcome if text is None else replace(outcome, text=text)

    def undecided(self, variant: str, verdict: str, reason: str, mode: str,
                  alpha: float) -> Outcome:
        """This check's outcome when it met no verdict (skipped, error): nothing measured."""
        return Outcome.undecided(self.label, variant, "", verdict, reason, mode, alpha,
                                 baseline=self.compares_with == "baseline")


def parse(marker: str, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None) -> Check:
    """Validate a marker's arguments; the error names the bad keyword and the allowed ones."""
    __tracebackhide__ = True
    kind = REGISTRY.get(marker)
    if kind is None:
        raise CheckArgumentError(f"unknown check {marker!r}; known: {', '.join(REGISTRY)}")
    return Check(marker, kind.bind(args, kwargs or {}))


def _edits(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn ``a`` into ``b``."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def misspelt(name: str) -> str | None:
    """The check ``name`` is most likely a misspelling of: one at most two edits away (case
    aside); None for a check's own name and for names far from all of them. Two edits catch
    the slips of a hand (a letter doubled, dropped, swapped or mistyped) and stay far from other
    plugins' markers; no two check names are fewer than four edits apart."""
    if name in REGISTRY:
        return None
    best = min(REGISTRY, key=lambda marker: _edits(name.lower(), marker))
    return best if _edits(name.lower(), best) <= 2 else None


def marker_lines() -> dict[str, str]:
    """Marker name to its ini ``markers`` line (``pytest --markers`` shows them)."""
    return {name: f"{kind.signature()}: {kind.summary.replace('`', '')}"
            for name, kind in REGISTRY.items()}


def marker_table() -> str:
    """The marker table of the docs' reference page, in Markdown."""
    lines = ["| marker | passes when |", "|---|---|"]
    for kind in REGISTRY.values():
        signature, summary = (text.replace("|", "\\|") for text in (kind.signature(), kind.summary))
        lines.append(f"| `{signature}` | {summary} |")
    return "\n".join(lines) + "\n"
