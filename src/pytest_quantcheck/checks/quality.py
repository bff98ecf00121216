"""Quality checks: perplexity, KL divergence, top-1 agreement and size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_quantcheck import stats
from pytest_quantcheck.checks.comparison import Comparisons
from pytest_quantcheck.checks.outcome import CheckArgumentError, Outcome, Subject
from pytest_quantcheck.checks.registry import (
    KL,
    KL_FROM,
    MACRO,
    PPL,
    SIZE,
    CheckType,
    Param,
    text_need,
)
from pytest_quantcheck.metrics.kld import KLDResult

if TYPE_CHECKING:
    from pytest_quantcheck.config import Settings

KLD_STATS = {"mean": None, "median": 0.5, "p90": 0.90, "p95": 0.95, "p99": 0.99,
             "p99.9": 0.999, "max": 1.0}


TEXT = Param("text", "name", default=None, positional=False)  # a named text, or "macro"


def _on(text: str | None) -> str:
    return "" if text is None else f" ({text})"


def _texts(ctx: Comparisons, text: str | None) -> list[str | None]:
    """The texts a check is decided on: one, or every named text for ``text="macro"``."""
    if text != MACRO:
        return [text]
    if not ctx.texts:
        raise CheckArgumentError("text='macro' averages over named texts; make eval_text a"
                                 " table of them")
    return list(ctx.texts)


def _kl_from(subject: Subject, ctx: Comparisons, of: str | None,
             text: str | None = None) -> tuple[KLDResult, str]:
    """The subject's KL pass against the run's reference (``of=None``) or the model ``of``
    names, on a text, and the words the metric's name ends with."""
    return ctx.kl_divergence(subject, of, text), "" if of is None else f" from {of}"


class _OnText(CheckType):
    """A check decided on chunks of an evaluation text: the default, one named by ``text=``,
    or (``text="macro"``) every named text, each weighing the same."""

    need: str = PPL
    macro_summary = ""

    def needs(self, args: Mapping[str, Any]) -> frozenset[str]:
        # a KL check from another model needs no KL pass against the reference
        need = KL_FROM if self.need == KL and args.get("of") is not None else self.need
        return frozenset({need}) | text_need(args["text"])

    def conflict(self, args: Mapping[str, Any], settings: Settings) -> str | None:
        text, names = args["text"], tuple(settings.eval_texts)
        if text is None:
            return None
        if text == MACRO:
            if not names:
                return ("text='macro' averages over named texts; make eval_text a table of"
                        " them")
            return self.macro_conflict(args)
        if text not in names:
            return (f"text {text!r} is not in eval_text"
                    f" ({', '.join(names) or 'a single unnamed text'}); name it there")
        return None

    def macro_conflict(self, args: Mapping[str, Any]) -> str | None:
        return None


class PerplexityWithin(_OnText):
    marker = "perplexity_within"
    comparison_arg = "pct"
    params = (Param("pct", low=0.0), Param("of", "target", default=None), TEXT)
    summary = ("PPL at most `pct` % above the reference (`of=None`), another variant"
               " (`of=\"Q8_0\"`) or the baseline (`of=\"baseline\"`), on the default text,"
               " a named one (`text=`) or all of them macro-averaged (`text=\"macro\"`)")

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        margin = math.log1p(args["pct"] / 100)
        texts = _texts(ctx, args["text"])
        pairs = [(ctx.perplexity(subject, t).chunk_nll, ctx.perplexity_against(subject, args["of"], t))
                 for t in texts]
        other = pairs[0][1]
        if args["text"] == MACRO:
            d = stats.macro_mean_at_most([a - b.chunk_nll for a, b in pairs], margin,
                                         ctx.alpha, ctx.mode, "chunk mean NLL differences")
        else:
            d = stats.paired_mean_at_most(pairs[0][0], other.chunk_nll, margin, ctx.alpha,
                                          ctx.mode, "chunk mean NLL differences")
        measured = math.exp(float(np.mean([np.mean(a) for a, _b in pairs])))
        compared = math.exp(float(np.mean([np.mean(b.chunk_nll) for _a, b in pairs])))
        return Outcome(metric=f"PPL{_on(args['text'])}", verdict=d.verdict, measured=measured,
                       compared=compared, change=math.exp(d.estimate) - 1,
                       limit=f"+{args['pct']:g}%", decision=d, against=other.label,
                       baseline=other.is_baseline, **base)


class PerplexityAtMost(_OnText):
    marker = "perplexity_at_most"
    params = (Param("value", low=1.0), TEXT)
    summary = "PPL at most `value` (on the default text, a named one, or `text=\"macro\"`)"

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        nll = [ctx.perplexity(subject, t).chunk_nll for t in _texts(ctx, args["text"])]
        limit = math.log(args["value"])
        if args["text"] == MACRO:
            d = stats.macro_mean_at_most(nll, limit, ctx.alpha, ctx.mode, "chunk mean NLLs")
        else:
            d = stats.mean_at_most(nll[0], limit, ctx.alpha, ctx.mode, "chunk mean NLLs")
        return Outcome(metric=f"PPL{_on(args['text'])}", verdict=d.verdict,
                       measured=math.exp(d.estimate), compared=args["value"], change=None,
                       limit=f"<= {args['value']:g}", decision=d, against="limit", **base)


class KLDivergenceAtMost(_OnText):
    marker = "kl_divergence_at_most"
    comparison_arg = "value"
    need = KL
    params = (Param("value", low=0.0), Param("stat", "choice", default="mean",
                                             choices=tuple(KLD_STATS)),
              Param("of", "model", default=None), TEXT)
    summary = ("KLD from the reference (`of=None`) or another model (`of=\"Q8_0\"`, a variant or a"
               " .gguf path) at most `value`; `stat` is `mean`, `median`, `p90`, `p95`, `p99`,"
               " `p99.9` or `max`; `text=` as for `perplexity_within` (`macro`: mean only)")

    def macro_conflict(self, args: Mapping[str, Any]) -> str | None:
        if args["stat"] != "mean":
            return "text='macro' averages the mean KL divergence; use stat='mean' or one text"
        return None

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        found = [_kl_from(subject, ctx, args["of"], t) for t in _texts(ctx, args["text"])]
        kld, source = found[0]
        q = KLD_STATS[args["stat"]]
        if args["text"] == MACRO:
            d = stats.macro_mean_at_most([k.chunk_kld for k, _s in found], args["value"],
                                         ctx.alpha, ctx.mode, "chunk mean KLDs")
        elif q is None:
            d = stats.mean_at_most(kld.chunk_kld, args["value"], ctx.alpha, ctx.mode,
                                   "chunk mean KLDs")
        else:
            d = stats.bootstrap_stat_at_most(list(kld.token_kld), q, args["value"], ctx.alpha,
                                             ctx.mode)
        return Outcome(metric=f"KLD {args['stat']}{source}{_on(args['text'])}",
                       verdict=d.verdict, measured=d.estimate, compared=args["value"],
                       change=None, limit=f"<= {args['value']:g}", decision=d, against="limit",
                       **base)


class Top1AgreementAtLeast(_OnText):
    marker = "top1_agreement_at_least"
    comparison_arg = "fraction"
    need = KL
    params = (Param("fraction", low=0.0, high=1.0), Param("of", "model", default=None), TEXT)
    summary = ("the same top token as the reference (`of=None`) or another model (a variant or a"
               " .gguf path) at least this often, on the default text or a named one (`text=`)")

    def macro_conflict(self, args: Mapping[str, Any]) -> str | None:
        return "text='macro' is for perplexity and the mean KL divergence; name one text"

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
                 base: dict[str, Any]) -> Outcome:
        kld, source = _kl_from(subject, ctx, args["of"], args["text"])
        per_chunk = kld.n_tokens // kld.n_chunks
        d = stats.proportion_at_least(kld.chunk_same_top, per_chunk, args["fraction"], ctx.alpha,
                                      ctx.mode)
        return Outcome(metric=f"top-1 agreement{source}{_on(args['text'])}", verdict=d.verdict,
                       measured=d.estimate, compared=args["fraction"], change=None,
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

    def evaluate(self, args: Mapping[str, Any], subject: Subject, ctx: Comparisons,
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
