"""Reports of a run's check outcomes: terminal table, Markdown (GitHub step summary), GitHub
annotations, JSON and a dedicated JUnit file; and the plots (the trade-off plot of a run, the
thread scaling of ``quantcheck bench``). Pure functions of the outcomes; no pytest here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pytest_quantcheck import __version__
from pytest_quantcheck.checks import Outcome, apply_holm
from pytest_quantcheck.checks.outcome import ERROR, RECORDED, SKIPPED, count_line
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.metrics.task_answers import Z95
from pytest_quantcheck.metrics.throughput import BenchResult

# "over": what the row's numbers rest on (8 of 64 chunks: a check decided in looks), so rows
# side by side say when they were computed on different chunks
COLUMNS = ("variant", "check", "measured", "against", "change", "over", "p", "verdict")


def rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for o in sorted(outcomes, key=lambda o: (o.variant, o.check)):
        out.append((
            o.variant, o.check, "" if o.measured is None else f"{o.measured:.4g}",
            "" if o.compared is None else f"{o.compared:.4g}",
            o.change_text(), o.basis(),
            "" if o.decision is None else f"{o.decision.p_value:.2g}",
            o.verdict.upper(),
        ))
    return out


def count_head(outcomes: Sequence[Outcome]) -> str:
    """``"7 checks: 6 passed, 1 skipped"``: every fate met, none left out."""
    return f"{len(outcomes)} check{'s' * (len(outcomes) != 1)}: {count_line(outcomes)}"


def reasons(outcomes: Sequence[Outcome]) -> list[str]:
    """Why each check that met no verdict (skipped, error) or was recorded did so, and what
    to do: the table has no room for it, and a skip nobody reads is a gate nobody ran."""
    return [f"{o.verdict.upper()} {o.variant} {o.check}: {o.reason}"
            for o in sorted(outcomes, key=lambda o: (o.variant, o.check))
            if o.verdict in (SKIPPED, ERROR, RECORDED)]


def text_table(outcomes: Sequence[Outcome]) -> list[str]:
    table = [COLUMNS, *rows(outcomes)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return [*lines, *reasons(outcomes), count_head(outcomes)]


def markdown(outcomes: Sequence[Outcome], models: Mapping[str, Mapping[str, Any]] | None = None,
             notices: Sequence[str] = ()) -> str:
    """The run's summary in Markdown: the checks (every fate counted, the reasons of those
    skipped, in error or recorded), then (given the models table) what each model's file
    holds, tensor types by bytes, and the notices about it."""
    head = f"### quantcheck: {count_head(outcomes)}\n\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows(outcomes):
        cells = [c.replace("|", "\\|") for c in r]
        lines.append("| " + " | ".join(cells) + " |")
    why = reasons(outcomes)
    if why:
        lines += ["", *(f"- {line}" for line in why)]
    mixes = {name: row["tensor_types"] for name, row in (models or {}).items()
             if row.get("tensor_types")}
    if mixes:
        lines += ["", "#### Tensor types (tensors, MiB)", "", "| model | types |", "|---|---|"]
        for name, types in sorted(mixes.items()):
            shown = ", ".join(f"{t} {v['tensors']} ({v['bytes'] / 2**20:.2f})"
                              for t, v in types.items())
            lines.append(f"| {name} | {shown} |")
    if notices:
        lines += ["", *(f"- {n}" for n in notices)]
    return head + "\n".join(lines) + "\n"


def _escape_property(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(
        ",", "%2C").replace(":", "%3A")


_ANNOTATION = {"fail": "error", "error": "error", "inconclusive": "warning", SKIPPED: "warning",
               RECORDED: "notice"}


def github_annotations(outcomes: Sequence[Outcome]) -> list[str]:
    """At the test's line: ``::error`` for failed checks and checks in error, ``::warning``
    for inconclusive and skipped ones, ``::notice`` for those recorded into the baseline."""
    out = []
    for o in outcomes:
        level = _ANNOTATION.get(o.verdict)
        if level is None:
            continue
        where = f"file={_escape_property(o.file)},line={o.line}," if o.file else ""
        title = _escape_property(f"quantcheck {o.check} {o.variant}")
        message = o.message().replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        out.append(f"::{level} {where}title={title}::{message}")
    return out


REPORT_SCHEMA = "pytest-quantcheck report"


class ReportError(QuantcheckError, ValueError):
    """A JSON report that cannot be read or merged; the message names the file and the fix."""


def _ordered(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return sorted(outcomes, key=lambda o: (o.variant, o.check, o.nodeid))


def to_json(outcomes: Sequence[Outcome], settings: dict[str, Any],
            baseline: dict[str, Any] | None = None,
            models: dict[str, dict[str, Any]] | None = None) -> str:
    """The ``--quant-json`` report: every check's numbers, the run's settings, the models table
    (per model: chunks decoded, taken from the result cache, looked at, seconds) and, when the
    run updated the baseline, its keys and records (so shards' reports merge into one file)."""
    data: dict[str, Any] = {"schema": REPORT_SCHEMA, "tool": f"pytest-quantcheck {__version__}",
                            "settings": settings, "models": dict(sorted((models or {}).items())),
                            "checks": [o.to_dict() for o in _ordered(outcomes)]}
    if baseline is not None:
        data["baseline"] = baseline
    return json.dumps(data, indent=1, default=str)


@dataclass(frozen=True)
class Report:
    path: Path
    settings: dict[str, Any]
    outcomes: list[Outcome]
    baseline: dict[str, Any] | None  # {"file", "keys", "records"}
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_report(path: Path) -> Report:
    fix = "give the file a pytest --quant-json run wrote"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such report; {fix}") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable report ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise ReportError(f"{path}: not a pytest-quantcheck report; {fix}")
    try:
        outcomes = [Outcome.from_dict(c) for c in data["checks"]]
        settings = dict(data["settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path}: damaged report ({exc!r}); run the shard again") from None
    models = data.get("models", {})
    return Report(path, settings, outcomes, data.get("baseline"),
                  models if isinstance(models, dict) else {})


def merge_reports(reports: Sequence[Report]) -> tuple[dict[str, Any], list[Outcome]]:
    """The settings and outcomes of one run, from its shards' reports: what a single run would
    have reported (Holm, if the run used it, is applied again across every shard's checks)."""
    if not reports:
        raise ReportError("no reports to merge; give the --quant-json files of every shard")
    first = reports[0]
    settings = {k: v for k, v in first.settings.items() if k != "shard"}
    seen: dict[tuple[str, str, str], Path] = {}
    outcomes: list[Outcome] = []
    for r in reports:
        other = {k: v for k, v in r.settings.items() if k != "shard"}
        differs = sorted(k for k in settings.keys() | other.keys() if settings.get(k) != other.get(k))
        if differs:
            raise ReportError(f"{r.path}: made with another {differs[0]} than {first.path.name}"
                              f" ({other.get(differs[0])!r}, not {settings.get(differs[0])!r});"
                              " merge the shards of one run")
        for o in r.outcomes:
            key = (o.nodeid, o.check, o.variant)
            if key in seen:
                raise ReportError(f"{r.path}: {o.check} of {o.variant} is also in"
                                  f" {seen[key].name}; give each shard's report once")
            seen[key] = r.path
            outcomes.append(o)
    if settings.get("correction") == "holm":
        # Corrected again, from the raw verdicts, across the family one run would have formed:
        # the markers' checks, which each shard corrected (an assertion helper's check is
        # decided on the spot, outside the family).
        family = [i for i, o in enumerate(outcomes) if o.p_adjusted is not None and o.decision]
        adjusted = apply_holm([replace(outcomes[i], verdict=outcomes[i].decision.verdict,  # type: ignore[union-attr]
                                       p_adjusted=None) for i in family])
        for i, o in zip(family, adjusted, strict=True):
            outcomes[i] = o
    return settings, _ordered(outcomes)


def write_junit(path: Path, outcomes: Sequence[Outcome]) -> None:
    """One testcase per check (variant by metric); its numbers as properties and in the message."""
    from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

    suite = TestSuite("quantcheck")
    for o in sorted(outcomes, key=lambda o: (o.variant, o.check)):
        case = TestCase(o.check, classname=f"quantcheck.{o.variant}")
        if o.verdict == "fail":
            case.result = [Failure(o.message(), "quantcheck")]
        elif o.verdict == ERROR:
            case.result = [Error(o.message(), "quantcheck")]
        elif o.verdict in ("inconclusive", SKIPPED):
            case.result = [Skipped(o.message())]
        case.system_out = o.message()
        suite.add_testcase(case)
        props = {"variant": o.variant, "measured": o.measured, "verdict": o.verdict,
                 "compared": o.compared, "change": o.change, "mode": o.mode, "alpha": o.alpha,
                 "test": o.nodeid}
        if o.decision is not None:
            props.update({"p_value": o.decision.p_value, "ci_low": o.decision.low,
                          "ci_high": o.decision.high})
        if o.n is not None:
            props.update({o.unit or "n": o.n, f"{o.unit or 'n'} available": o.n_available,
                          "text": o.text})
        for key, value in props.items():
            if value is not None:
                suite.add_property(f"{o.variant} {o.check} {key}", str(value))
    xml = JUnitXml()
    xml.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)


PLOTS_HINT = "install matplotlib for plots: pip install 'pytest-quantcheck[plots]'"


PANELS = (  # point key, axis label, title, log scale, higher is better
    ("ppl", "perplexity", "size against perplexity", False, False),
    ("kld", "mean KL divergence from the reference", "size against KL divergence", True, False),
    ("tg_tokens_per_s", "generation tokens/s (tg)", "size against generation speed", False, True),
    ("pp_tokens_per_s", "prompt tokens/s (pp)", "size against prompt speed", False, True),
)
COLOURS = {"pass": "tab:green", "fail": "tab:red", "inconclusive": "tab:orange",
           None: "tab:gray"}  # by the worst verdict of a model's checks; gray: none


def verdicts(outcomes: Sequence[Outcome]) -> dict[str, str]:
    """Each variant's worst verdict: fail, else inconclusive, else pass."""
    order = {"pass": 0, "inconclusive": 1, "fail": 2, ERROR: 2}  # skipped, recorded: no verdict
    worst: dict[str, str] = {}
    for o in outcomes:
        if order.get(o.verdict, 0) >= order.get(worst.get(o.variant, "pass"), 0):
            worst[o.variant] = o.verdict
    return worst


def pareto(xs: Sequence[float], ys: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indexes of the points no other point beats on both size (smaller is better) and the
    metric, by size: the frontier a quantizer chooses from."""
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(len(xs)), key=lambda i: (xs[i], sign * ys[i]))
    frontier: list[int] = []
    best = math.inf
    for i in order:
        if sign * ys[i] < best:
            frontier.append(i)
            best = sign * ys[i]
    return frontier


def same_points(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Variants drawn at one point (identical files measure identically) joined into one
    label: ``"Q6_K, Q8_0"``."""
    groups: dict[tuple[float, float], list[str]] = {}
    for name, x, y in points:
        key = next((k for k in groups if math.isclose(k[0], x, rel_tol=1e-9)
                    and math.isclose(k[1], y, rel_tol=1e-9)), (x, y))
        groups.setdefault(key, []).append(name)
    return [(", ".join(sorted(names)), x, y) for (x, y), names in groups.items()]


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display units


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                 radius: float = 4.0) -> list[tuple[float, float]]:
    """Offsets (display units) for labels of the given sizes next to their anchor points, so
    that no label covers another label or any point: each label, widest first, takes the first
    free spot of eight directions at growing distances."""
    dot = radius
    taken: list[Box] = [(x - dot, y - dot, x + dot, y + dot) for x, y in anchors]
    offsets: list[tuple[float, float]] = [(0.0, 0.0)] * len(anchors)
    gap = radius + 2.0
    for i in sorted(range(len(anchors)), key=lambda i: -sizes[i][0]):
        (x, y), (w, h) = anchors[i], sizes[i]
        choice = None
        for step in range(60):
            d = gap + step * h * 0.6
            for dx, dy in ((d, d * 0.3), (d, -h - d * 0.3), (-w - d, d * 0.3),
                           (-w - d, -h - d * 0.3), (-w / 2, d), (-w / 2, -h - d), (d, -h / 2),
                           (-w - d, -h / 2)):
                box = (x + dx, y + dy, x + dx + w, y + dy + h)
                if not any(_overlaps(box, other) for other in taken):
                    choice = (dx, dy)
                    break
            if choice is not None:
                break
        choice = choice or (gap, gap)
        offsets[i] = choice
        taken.append((x + choice[0], y + choice[1], x + choice[0] + w, y + choice[1] + h))
    return offsets


def over_common_chunks(points: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plot points with perplexity and mean KL divergence of every model over the same chunks:
    the first n that every model has (a model decided early in looks has fewer), with 95 %
    intervals from the spread of the chunks' values (tokens within a chunk are not
    independent). ``ppl_chunks`` / ``kld_chunks`` say n; models side by side are compared like
    for like."""
    out = {name: {k: v for k, v in p.items() if k not in ("chunk_nll", "chunk_kld")}
           for name, p in points.items()}
    for key, series, shown in (("ppl", "chunk_nll", math.exp), ("kld", "chunk_kld", float)):
        have = {name: np.asarray(p[series], dtype=np.float64) for name, p in points.items()
                if len(p.get(series) or ())}
        if not have:
            continue
        n = min(v.size for v in have.values())
        for name, values in have.items():
            first = values[:n]
            mean = float(first.mean())
            se = float(first.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
            out[name].update({key: shown(mean), f"{key}_low": shown(mean - Z95 * se),
                              f"{key}_high": shown(mean + Z95 * se), f"{key}_chunks": n})
    return out


def plot_tradeoffs(path: Path, points: dict[str, dict[str, Any]],
                   status: Mapping[str, str] | None = None) -> None:
    """Bits per weight against perplexity, mean KL divergence and tokens/s: one panel per
    measured quantity; each variant a point with its 95 % interval, coloured by its checks'
    verdict (green pass, red fail, orange inconclusive, gray none), the Pareto frontier drawn
    through the variants nothing beats on both axes, and labels placed where they cover no
    other label or point (variants at one point share one label). PNG or SVG by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    status = status or {}

    def value(p: dict[str, float], key: str, log: bool) -> float | None:
        v = p.get(key)
        # zero KLD (the reference itself) has no place on a log scale
        return None if v is None or v != v or (log and v <= 0) else v

    panels = [panel for panel in PANELS
              if any(value(p, panel[0], panel[3]) is not None for p in points.values())]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.5),
                             squeeze=False)
    drawn_by_panel = []
    for ax, (key, label, title, log, higher) in zip(axes[0], panels, strict=False):
        drawn = [(name, p["bits_per_weight"], v) for name, p in points.items()
                 if (v := value(p, key, log)) is not None]
        drawn_by_panel.append(drawn)
        for name, x, y in drawn:
            p = points[name]
            low, high = p.get(f"{key}_low"), p.get(f"{key}_high")
            colour = COLOURS.get(status.get(name), "tab:gray")
            if low is not None and high is not None and (not log or low > 0):
                ax.errorbar(x, y, yerr=[[y - low], [high - y]], fmt="none", ecolor=colour,
                            alpha=0.6, capsize=3)
            ax.scatter(x, y, color=colour, zorder=3)
        front = pareto([d[1] for d in drawn], [d[2] for d in drawn], higher)
        if len(front) > 1:
            ax.step([drawn[i][1] for i in front], [drawn[i][2] for i in front], where="post",
                    color="black", alpha=0.35, linestyle="--", label="Pareto frontier")
            ax.legend(loc="best", fontsize="small")
        counted = {p[f"{key}_chunks"] for p in points.values() if f"{key}_chunks" in p}
        if len(counted) == 1:  # every model on the same chunks: say how many
            title += f" (first {counted.pop()} chunks)"
        ax.set(xlabel="bits per weight", ylabel=label, title=title,
               yscale="log" if log else "linear")
        ax.grid(True, alpha=0.3)
        ax.margins(0.15)
    fig.tight_layout()
    fig.canvas.draw()  # fixes the data-to-display transforms the placement works in
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax, drawn in zip(axes[0], drawn_by_panel, strict=False):
        labels = same_points(drawn)
        texts = [ax.annotate(name, (x, y), textcoords="offset points", xytext=(0, 0),
                             fontsize="small") for name, x, y in labels]
        sizes = [(b.width, b.height) for b in (t.get_window_extent(renderer) for t in texts)]
        anchors = [(float(a), float(b)) for a, b in
                   (ax.transData.transform((x, y)) for _n, x, y in labels)]
        # placed in this canvas's pixels, set in points: an SVG (72 dpi) keeps the layout
        per_pixel = 72.0 / fig.dpi
        for text, (dx, dy) in zip(texts, place_labels(anchors, sizes), strict=True):
            text.set_position((dx * per_pixel, dy * per_pixel))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_scaling(path: Path, results: Sequence[BenchResult], title: str) -> None:
    """Tokens/s against threads, as ``quantcheck bench --plot`` draws a sweep: one line per
    test (pp512, tg128, ...) through its thread counts, each point the mean with its
    repetitions' 95 % interval (of the log tokens/s, exponentiated), one panel per phase
    (prompt processing runs ten times faster than generation, and would flatten it). PNG, SVG
    or PDF by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [(phase, label) for phase, label in (("pp", "prompt processing"),
                                                  ("tg", "text generation"))
              if any(r.test.startswith(phase) for r in results)]
    fig, axes = plt.subplots(1, max(1, len(phases)), figsize=(5.5 * max(1, len(phases)), 4.5),
                             squeeze=False)
    threads = sorted({r.n_threads for r in results})
    for ax, (phase, label) in zip(axes[0], phases, strict=False):
        tests = dict.fromkeys(r.test for r in results if r.test.startswith(phase))
        for test in tests:
            line = sorted((r for r in results if r.test == test), key=lambda r: r.n_threads)
            x = np.array([r.n_threads for r in line])
            drawn = ax.plot(x, [r.mean for r in line], marker="o", label=test)[0]
            # the interval is of the log scale's mean, not centred on the mean: drawn as is;
            # one needs two repetitions, with one (nan) the point stands alone
            low, high = np.array([r.interval() for r in line]).T
            seen = ~np.isnan(low)
            ax.vlines(x[seen], low[seen], high[seen], color=drawn.get_color(), alpha=0.6)
        ax.set(xlabel="threads", ylabel="tokens/s (mean and 95 % CI)", title=label,
               xticks=threads)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)  # the model and machine, once: a panel's title has no room for them
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
