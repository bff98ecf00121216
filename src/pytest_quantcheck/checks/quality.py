"""Quality checks: perplexity, KL divergence, top-1 agreement and size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pytest_quantcheck import stats
from pytest_quantcheck.checks.outcome import Context, Outcome, Subject
from pytest_quantcheck.checks.registry import KL, PPL, SIZE, CheckType, Param
from pytest_quantcheck.metrics.kld import KLDResult

KLD_STATS = {"mean": None, "median": 0.5, "p90": 0.90, "p95": 0.95, "p99": 0.99,
             "p99.9": 0.999, "max": 1.0}


class PerplexityWithin(CheckType):
    marker = "perplexity_within"
    relative_to = "pct"
    params = (Param("pct", low=0.0), Param("of", "target", default=None))
    summary = ("PPL at most `pct` % above the reference (`of=None`), another variant"
               " (`of=\"Q8_0\"`) or the baseline (`of=\"baseline\"`)")

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({PPL})

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Context,
                 base: dict[str, Any]) -> Outcome:
        other = ctx.resolve(subject, args["of"])
        mine = subject.perplexity().chunk_nll
        d = stats.paired_mean_at_most(mine, other.chunk_nll, math.log1p(args["pct"] / 100),
                                      ctx.alpha, ctx.mode, "chunk mean NLL differences")
        return Outcome(metric="PPL", verdict=d.verdict, measured=math.exp(float(np.mean(mine))),
                       compared=other.ppl, change=math.exp(d.estimate) - 1,
                       limit=f"+{args['pct']:g}%", decision=d, against=other.label,
                       baseline=other.is_baseline, **base)


class PerplexityAtMost(CheckType):
    marker = "perplexity_at_most"
    params = (Param("value", low=1.0),)
    summary = "PPL at most `value`"

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({PPL})

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Context,
                 base: dict[str, Any]) -> Outcome:
        res = subject.perplexity()
        d = stats.mean_at_most(res.chunk_nll, math.log(args["value"]), ctx.alpha, ctx.mode,
                               "chunk mean NLLs")
        return Outcome(metric="PPL", verdict=d.verdict, measured=res.ppl, compared=args["value"],
                       change=None, limit=f"<= {args['value']:g}", decision=d, against="limit",
                       **base)


def _kl_from(subject: Subject, ctx: Context, of: str | None) -> tuple[KLDResult, str]:
    """The subject's KL pass against the run's reference (``of=None``) or the model ``of``
    names, and the words the metric's name ends with."""
    if of is None:
        return subject.kl_divergence(), ""
    if ctx.resolve_kl is None:
        raise ValueError("a KL check with of= needs a context that resolves other models")
    return ctx.resolve_kl(subject, of), f" from {of}"


class KLDivergenceAtMost(CheckType):
    marker = "kl_divergence_at_most"
    relative_to = "value"
    params = (Param("value", low=0.0), Param("stat", "choice", default="mean",
                                             choices=tuple(KLD_STATS)),
              Param("of", "model", default=None))
    summary = ("KLD from the reference (`of=None`) or another model (`of=\"Q8_0\"`, a variant or a"
               " .gguf path) at most `value`; `stat` is `mean`, `median`, `p90`, `p95`, `p99`,"
               " `p99.9` or `max`")

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({KL})

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Context,
                 base: dict[str, Any]) -> Outcome:
        kld, source = _kl_from(subject, ctx, args["of"])
        q = KLD_STATS[args["stat"]]
        if q is None:
            d = stats.mean_at_most(kld.chunk_kld, args["value"], ctx.alpha, ctx.mode,
                                   "chunk mean KLDs")
        else:
            d = stats.bootstrap_stat_at_most(list(kld.token_kld), q, args["value"], ctx.alpha,
                                             ctx.mode)
        return Outcome(metric=f"KLD {args['stat']}{source}", verdict=d.verdict,
                       measured=d.estimate, compared=args["value"], change=None,
                       limit=f"<= {args['value']:g}", decision=d, against="limit", **base)


class Top1AgreementAtLeast(CheckType):
    marker = "top1_agreement_at_least"
    relative_to = "fraction"
    params = (Param("fraction", low=0.0, high=1.0), Param("of", "model", default=None))
    summary = ("the same top token as the reference (`of=None`) or another model (a variant or a"
               " .gguf path) at least this often")

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({KL})

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Context,
                 base: dict[str, Any]) -> Outcome:
        kld, source = _kl_from(subject, ctx, args["of"])
        per_chunk = kld.n_tokens // kld.n_chunks
        d = stats.proportion_at_least(kld.chunk_same_top, per_chunk, args["fraction"], ctx.alpha,
                                      ctx.mode)
        return Outcome(metric=f"top-1 agreement{source}", verdict=d.verdict, measured=d.estimate,
                       compared=args["fraction"], change=None,
                       limit=f">= {args['fraction']:.2%}", decision=d, against="limit", **base)


class SizeAtMost(CheckType):
    marker = "size_at_most"
    params = (Param("bytes", low=0.0, default=None), Param("bpw", low=0.0, default=None))
    exclusive = ("bytes", "bpw")
    summary = "file size or bits per weight at most this"

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({SIZE})

    def refine(self, args: dict[str, Any], given: set[str]) -> dict[str, Any]:
        return {k: v for k, v in args.items() if k in given}

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Context,
                 base: dict[str, Any]) -> Outcome:
        if "bytes" in args:
            ok = subject.size_bytes <= args["bytes"]
            return Outcome(metric="size", verdict=stats.PASS if ok else stats.FAIL,
                           measured=float(subject.size_bytes), compared=args["bytes"],
                           change=None, limit=f"<= {args['bytes']:,.0f} bytes", decision=None,
                           against="limit", **base)
        ok = subject.bits_per_weight <= args["bpw"]
        return Outcome(metric="bits per weight", verdict=stats.PASS if ok else stats.FAIL,
                       measured=subject.bits_per_weight, compared=args["bpw"], change=None,
                       limit=f"<= {args['bpw']:g} bpw", decision=None, against="limit", **base)
