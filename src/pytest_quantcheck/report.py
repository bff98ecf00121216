"""Reports of a run's check outcomes: terminal table, Markdown (GitHub step summary), GitHub
annotations, JSON and a dedicated JUnit file. Pure functions of the outcomes; no pytest here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_quantcheck import __version__
from pytest_quantcheck.checks import Outcome

COLUMNS = ("variant", "check", "measured", "against", "change", "p", "verdict")


def rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for o in sorted(outcomes, key=lambda o: (o.variant, o.check)):
        out.append((
            o.variant, o.check, f"{o.measured:.4g}",
            "" if o.compared is None else f"{o.compared:.4g}",
            "" if o.change is None else f"{o.change:+.2%}",
            "" if o.decision is None else f"{o.decision.p_value:.2g}",
            o.verdict.upper(),
        ))
    return out


def text_table(outcomes: Sequence[Outcome]) -> list[str]:
    table = [COLUMNS, *rows(outcomes)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def markdown(outcomes: Sequence[Outcome]) -> str:
    failed = sum(not o.passed for o in outcomes)
    head = f"### quantcheck: {len(outcomes) - failed} of {len(outcomes)} checks passed\n\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows(outcomes):
        cells = [c.replace("|", "\\|") for c in r]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _escape_property(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(
        ",", "%2C").replace(":", "%3A")


def github_annotations(outcomes: Sequence[Outcome]) -> list[str]:
    """``::error`` for failed checks, ``::warning`` for inconclusive ones, at the test's line."""
    out = []
    for o in outcomes:
        if o.passed:
            continue
        level = "warning" if o.verdict == "inconclusive" else "error"
        where = f"file={_escape_property(o.file)},line={o.line}," if o.file else ""
        title = _escape_property(f"quantcheck {o.check} {o.variant}")
        message = o.message().replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        out.append(f"::{level} {where}title={title}::{message}")
    return out


def to_json(outcomes: Sequence[Outcome], settings: dict[str, Any]) -> str:
    return json.dumps({"tool": f"pytest-quantcheck {__version__}", "settings": settings,
                       "checks": [o.to_dict() for o in outcomes]}, indent=1, default=str)


def write_junit(path: Path, outcomes: Sequence[Outcome]) -> None:
    """One testcase per check (variant by metric); its numbers as properties and in the message."""
    from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

    suite = TestSuite("quantcheck")
    for o in sorted(outcomes, key=lambda o: (o.variant, o.check)):
        case = TestCase(o.check, classname=f"quantcheck.{o.variant}")
        if o.verdict == "fail":
            case.result = [Failure(o.message(), "quantcheck")]
        elif o.verdict == "inconclusive":
            case.result = [Skipped(o.message())]
        case.system_out = o.message()
        suite.add_testcase(case)
        props = {"variant": o.variant, "measured": o.measured, "verdict": o.verdict,
                 "compared": o.compared, "change": o.change, "mode": o.mode, "alpha": o.alpha,
                 "test": o.nodeid}
        if o.decision is not None:
            props.update({"p_value": o.decision.p_value, "ci_low": o.decision.low,
                          "ci_high": o.decision.high, "chunks": o.decision.n})
        for key, value in props.items():
            if value is not None:
                suite.add_property(f"{o.variant} {o.check} {key}", str(value))
    xml = JUnitXml()
    xml.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)


PLOTS_HINT = "install matplotlib for plots: pip install 'pytest-quantcheck[plots]'"


PANELS = (  # point key, axis label, title, log scale
    ("ppl", "perplexity", "size against perplexity", False),
    ("kld", "mean KL divergence from the reference", "size against KL divergence", True),
    ("tg_tokens_per_s", "generation tokens/s (tg)", "size against generation speed", False),
    ("pp_tokens_per_s", "prompt tokens/s (pp)", "size against prompt speed", False),
)


def plot_tradeoffs(path: Path, points: dict[str, dict[str, float]]) -> None:
    """Bits per weight against perplexity, mean KL divergence and tokens/s: one panel per
    measured quantity, one labelled point per variant, as practitioners draw them when choosing
    a quantization. PNG or SVG by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(p: dict[str, float], key: str, log: bool) -> float | None:
        v = p.get(key)
        # zero KLD (the reference itself) has no place on a log scale
        return None if v is None or v != v or (log and v <= 0) else v

    panels = [panel for panel in PANELS
              if any(value(p, panel[0], panel[3]) is not None for p in points.values())]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.5),
                             squeeze=False)
    for ax, (key, label, title, log) in zip(axes[0], panels, strict=False):
        for name, p in sorted(points.items(), key=lambda kv: kv[1]["bits_per_weight"]):
            v = value(p, key, log)
            if v is None:
                continue
            ax.scatter(p["bits_per_weight"], v, color="tab:blue")
            ax.annotate(name, (p["bits_per_weight"], v), textcoords="offset points", xytext=(4, 4))
        ax.set(xlabel="bits per weight", ylabel=label, title=title, yscale="log" if log else "linear")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
