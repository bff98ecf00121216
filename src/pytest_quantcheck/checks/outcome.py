"""Quality checks: the markers' arguments, their evaluation, and the messages users read.

No pytest here: a check is parsed from a marker's arguments (or an assertion helper's), evaluated
against a :class:`Subject` and whatever it is compared with, and returns an :class:`Outcome` whose
``message`` says what was measured, against what, by how much, how sure, and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from pytest_quantcheck import stats
from pytest_quantcheck.baseline import UPDATE_FLAG
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.memory import MemoryUsage, MiB
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.metrics.throughput import BenchResult, ThroughputRun

KLD_STATS = {"mean": None, "median": 0.5, "p90": 0.90, "p95": 0.95, "p99": 0.99,
             "p99.9": 0.999, "max": 1.0}


class CheckArgumentError(ValueError):
    """A marker or helper called with arguments it does not take."""


class CheckSkipped(Exception):
    """A check that cannot be decided here and says why (a baseline from another machine, no
    GPU); it is reported as skipped, never as passed or failed."""


class Subject(Protocol):
    name: str
    size_bytes: int

    @property
    def bits_per_weight(self) -> float: ...

    def perplexity(self) -> PerplexityResult: ...

    def kl_divergence(self) -> KLDResult: ...

    def throughput(self) -> ThroughputRun: ...

    def memory(self) -> MemoryUsage: ...


@dataclass(frozen=True)
class SpeedAgainst:
    """What a relative throughput check compares with: a result of this run or a baseline's."""

    label: str
    result: BenchResult
    is_baseline: bool = False


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
class Outcome:
    check: str  # "perplexity_within(pct=3)"
    variant: str
    metric: str  # column of the summary table
    verdict: str
    measured: float
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

    def message(self) -> str:
        d = self.decision
        head = f"{self.check} {self.verdict.upper()} for {self.variant}: {self.metric} {_num(self.measured)}"
        if self.compared is not None:
            head += f" vs {_num(self.compared)}"
            if self.against:
                head += f" ({self.against})"
        if self.change is not None:
            head += f", {self.change:+.2%}"
        parts = [head]
        if d is not None:
            level = 1 - 2 * self.alpha
            parts.append(f"{level:.0%} CI {self._interval(d)}")
        parts.append(f"tolerance {self.limit}")
        if d is not None:
            p = f"p = {d.p_value:.3g}"
            if self.p_adjusted is not None:
                p += f" (Holm-adjusted {self.p_adjusted:.3g})"
            parts.append(f"{d.test}, {p}, mode {self.mode}, alpha {self.alpha:g}")
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
        if self.metric == "top-1 agreement":
            return f"{d.low:.2%} to {d.high:.2%}"
        if self.metric.endswith("t/s") and self.change is not None:
            return f"{math.exp(d.low) - 1:+.2%} to {math.exp(d.high) - 1:+.2%}"
        return f"{_num(d.low)} to {_num(d.high)}"


def _arg(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if float(value).is_integer() and abs(value) >= 1e5:  # sizes in bytes: every digit
        return str(int(value))
    return f"{value:g}"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


# ---- argument parsing --------------------------------------------------------------------------


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckArgumentError(f"{name} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise CheckArgumentError(f"{name} must be {bounds}, got {value!r}")
    return float(value)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise CheckArgumentError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _bind(marker: str, args: tuple[Any, ...], kwargs: dict[str, Any],
          names: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if len(args) > len(names):
        raise CheckArgumentError(f"{marker} takes at most {len(names)} positional argument(s)")
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise CheckArgumentError(
                f"{marker} got an unknown keyword {key!r}; allowed: {', '.join(names)}")
        if key in bound:
            raise CheckArgumentError(f"{marker} got {key!r} twice")
        bound[key] = value
    missing = [n for n in required if n not in bound]
    if missing:
        raise CheckArgumentError(f"{marker} needs {', '.join(missing)}")
    return bound


@dataclass(frozen=True)
class Check:
    """A parsed marker: ``evaluate`` it with a context that knows how to find comparisons."""

    marker: str
    args: dict[str, Any]

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={_arg(v)}" for k, v in self.args.items() if v is not None)
        return f"{self.marker}({inner})"

    @property
    def compares_with(self) -> str | None:
        """The variant name or "baseline" this check needs, if any."""
        if self.marker == "perplexity_within" or (
                self.marker == "throughput_at_least" and self.args.get("pct") is not None):
            return self.args.get("of")
        return None


def parse(marker: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Check:
    """Validate a marker's arguments; the error names the bad keyword and the allowed ones."""
    kwargs = dict(kwargs or {})
    if marker == "perplexity_within":
        b = _bind(marker, args, kwargs, ("pct", "of"), ("pct",))
        b["pct"] = _number("pct", b["pct"], low=0.0)
        of = b.get("of")
        if of is not None and (not isinstance(of, str) or not of):
            raise CheckArgumentError(f"of must be a variant name or 'baseline', got {of!r}")
        return Check(marker, {"pct": b["pct"], "of": of})
    if marker == "perplexity_at_most":
        b = _bind(marker, args, kwargs, ("value",), ("value",))
        return Check(marker, {"value": _number("value", b["value"], low=1.0)})
    if marker == "kl_divergence_at_most":
        b = _bind(marker, args, kwargs, ("value", "stat"), ("value",))
        stat = _one_of("stat", b.get("stat", "mean"), tuple(KLD_STATS))
        return Check(marker, {"value": _number("value", b["value"], low=0.0), "stat": stat})
    if marker == "top1_agreement_at_least":
        b = _bind(marker, args, kwargs, ("fraction",), ("fraction",))
        return Check(marker, {"fraction": _number("fraction", b["fraction"], low=0.0, high=1.0)})
    if marker == "size_at_most":
        b = _bind(marker, args, kwargs, ("bytes", "bpw"), ())
        if ("bytes" in b) == ("bpw" in b):
            raise CheckArgumentError("size_at_most takes exactly one of bytes= or bpw=")
        key = "bytes" if "bytes" in b else "bpw"
        return Check(marker, {key: _number(key, b[key], low=0.0)})
    if marker == "throughput_at_least":
        b = _bind(marker, args, kwargs, ("tokens_per_s", "pct", "of", "phase"), ())
        if ("tokens_per_s" in b) == ("pct" in b):
            raise CheckArgumentError("throughput_at_least takes exactly one of tokens_per_s= or pct=")
        phase = _one_of("phase", b.get("phase", "tg"), PHASES)
        if "tokens_per_s" in b:
            if "of" in b:
                raise CheckArgumentError("of= goes with pct=, not with tokens_per_s=")
            tps = _number("tokens_per_s", b["tokens_per_s"], low=0.0)
            return Check(marker, {"tokens_per_s": tps, "phase": phase})
        of = b.get("of", "baseline")
        if not isinstance(of, str) or not of:
            raise CheckArgumentError(f"of must be a variant name or 'baseline', got {of!r}")
        pct = _number("pct", b["pct"], low=-99.0)
        return Check(marker, {"pct": pct, "of": of, "phase": phase})
    if marker == "memory_at_most":
        b = _bind(marker, args, kwargs, ("mb", "device"), ("mb",))
        device = _one_of("device", b.get("device", "host"), DEVICES)
        return Check(marker, {"mb": _number("mb", b["mb"], low=0.0), "device": device})
    raise CheckArgumentError(f"unknown check {marker!r}; known: {', '.join(MARKERS)}")


PHASES = ("pp", "tg")
DEVICES = ("host", "gpu")


MARKERS = {
    "perplexity_within": "perplexity_within(pct, of=None): PPL at most pct % above the reference"
    " (of=None), another variant (of='Q8_0') or the stored baseline (of='baseline')",
    "perplexity_at_most": "perplexity_at_most(value): perplexity at most value",
    "kl_divergence_at_most": "kl_divergence_at_most(value, stat='mean'): KL divergence from the"
    f" reference at most value; stat is one of {', '.join(KLD_STATS)}",
    "top1_agreement_at_least": "top1_agreement_at_least(fraction): same top token as the"
    " reference at least this often",
    "size_at_most": "size_at_most(bytes=... | bpw=...): file size or bits per weight at most this",
    "throughput_at_least": "throughput_at_least(tokens_per_s=... | pct=..., of='baseline',"
    " phase='tg'): tokens/s of llama-bench's pp or tg test at least this, or at most -pct %"
    " below the stored baseline (same machine) or another variant",
    "memory_at_most": "memory_at_most(mb, device='host'): peak resident memory (or GPU memory)"
    " of load plus evaluation at most mb MiB",
}


# ---- evaluation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """How a check finds what it compares with; supplied by the session or a helper's caller."""

    alpha: float
    mode: str
    resolve: Callable[[Subject, str | None], Against]  # (subject, of) -> comparison
    resolve_speed: Callable[[Subject, str, str], SpeedAgainst] | None = None  # (subject, of, phase)


def evaluate(check: Check, subject: Subject, ctx: Context) -> Outcome:
    a = check.args
    base: dict[str, Any] = {"check": check.label, "variant": subject.name, "mode": ctx.mode,
                            "alpha": ctx.alpha}
    if check.marker == "perplexity_within":
        other = ctx.resolve(subject, a["of"])
        mine = subject.perplexity().chunk_nll
        d = stats.paired_mean_at_most(mine, other.chunk_nll, math.log1p(a["pct"] / 100),
                                      ctx.alpha, ctx.mode, "chunk mean NLL differences")
        return Outcome(metric="PPL", verdict=d.verdict, measured=math.exp(float(np.mean(mine))),
                       compared=other.ppl, change=math.exp(d.estimate) - 1,
                       limit=f"+{a['pct']:g}%", decision=d, against=other.label,
                       baseline=other.is_baseline, **base)
    if check.marker == "perplexity_at_most":
        res = subject.perplexity()
        d = stats.mean_at_most(res.chunk_nll, math.log(a["value"]), ctx.alpha, ctx.mode,
                               "chunk mean NLLs")
        return Outcome(metric="PPL", verdict=d.verdict, measured=res.ppl, compared=a["value"],
                       change=None, limit=f"<= {a['value']:g}", decision=d, against="limit",
                       **base)
    if check.marker == "kl_divergence_at_most":
        kld = subject.kl_divergence()
        q = KLD_STATS[a["stat"]]
        if q is None:
            d = stats.mean_at_most(kld.chunk_kld, a["value"], ctx.alpha, ctx.mode,
                                   "chunk mean KLDs")
        else:
            d = stats.bootstrap_stat_at_most(list(kld.token_kld), q, a["value"], ctx.alpha,
                                             ctx.mode)
        return Outcome(metric=f"KLD {a['stat']}", verdict=d.verdict, measured=d.estimate,
                       compared=a["value"], change=None, limit=f"<= {a['value']:g}", decision=d,
                       against="limit", **base)
    if check.marker == "top1_agreement_at_least":
        kld = subject.kl_divergence()
        per_chunk = kld.n_tokens // kld.n_chunks
        d = stats.proportion_at_least(kld.chunk_same_top, per_chunk, a["fraction"], ctx.alpha,
                                      ctx.mode)
        return Outcome(metric="top-1 agreement", verdict=d.verdict, measured=d.estimate,
                       compared=a["fraction"], change=None, limit=f">= {a['fraction']:.2%}",
                       decision=d, against="limit", **base)
    if check.marker == "throughput_at_least":
        return _throughput(check, subject, ctx, base)
    if check.marker == "memory_at_most":
        return _memory(check, subject, base)
    if "bytes" in a:
        ok = subject.size_bytes <= a["bytes"]
        return Outcome(metric="size", verdict=stats.PASS if ok else stats.FAIL,
                       measured=float(subject.size_bytes), compared=a["bytes"], change=None,
                       limit=f"<= {a['bytes']:,.0f} bytes", decision=None, against="limit", **base)
    ok = subject.bits_per_weight <= a["bpw"]
    return Outcome(metric="bits per weight", verdict=stats.PASS if ok else stats.FAIL,
                   measured=subject.bits_per_weight, compared=a["bpw"], change=None,
                   limit=f"<= {a['bpw']:g} bpw", decision=None, against="limit", **base)


def _phase_result(run: ThroughputRun, phase: str, name: str) -> BenchResult:
    if phase not in run.tests:
        size = "bench_prompt" if phase == "pp" else "bench_gen"
        raise CheckSkipped(f"no {phase} test was run for {name}: {size} is 0")
    return run.tests[phase]


def _throughput(check: Check, subject: Subject, ctx: Context, base: dict[str, Any]) -> Outcome:
    a = check.args
    run = subject.throughput()
    mine = _phase_result(run, a["phase"], subject.name)
    where = f"measured on {run.fingerprint.summary()}"
    note = "; ".join(n for n in (where, run.roofline() if a["phase"] == "tg" else "") if n)
    if "tokens_per_s" in a:
        d = stats.mean_at_least(mine.samples, a["tokens_per_s"], ctx.alpha, ctx.mode,
                                f"{mine.test} repetitions")
        return Outcome(metric=f"{mine.test} t/s", verdict=d.verdict, measured=mine.mean,
                       compared=a["tokens_per_s"], change=None,
                       limit=f">= {a['tokens_per_s']:g} t/s", decision=d, against="limit",
                       note=note, **base)
    if ctx.resolve_speed is None:
        raise CheckArgumentError("this caller cannot compare throughput with another model")
    other = ctx.resolve_speed(subject, a["of"], a["phase"])
    if other.result.test != mine.test:
        raise CheckSkipped(f"{other.label} has {other.result.test}, this run measures {mine.test};"
                           " set bench_prompt / bench_gen alike to compare")
    d = stats.ratio_at_least(mine.samples, other.result.samples, 1 + a["pct"] / 100, ctx.alpha,
                             ctx.mode, f"{mine.test} t/s")
    return Outcome(metric=f"{mine.test} t/s", verdict=d.verdict, measured=mine.mean,
                   compared=other.result.mean, change=math.exp(d.estimate) - 1,
                   limit=f"{a['pct']:+g}%", decision=d, against=other.label,
                   baseline=other.is_baseline, note=note, **base)


def _memory(check: Check, subject: Subject, base: dict[str, Any]) -> Outcome:
    a = check.args
    usage = subject.memory()
    if a["device"] == "gpu":
        used = usage.gpu_bytes
        if used is None:
            raise CheckSkipped(f"GPU memory of {subject.name} not available: {usage.gpu.note}")
        metric = "GPU MiB"
    else:
        used, metric = usage.peak_bytes, "peak RSS MiB"
    ok = used <= a["mb"] * MiB
    note = f"{usage.describe()}, load plus one evaluation batch"
    machine = getattr(subject, "fingerprint", None)
    if machine is not None:
        note += f", on {machine().summary()}"
    return Outcome(metric=metric, verdict=stats.PASS if ok else stats.FAIL, measured=used / MiB,
                   compared=a["mb"], change=None, limit=f"<= {a['mb']:g} MiB", decision=None,
                   against="limit", note=note, **base)


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
