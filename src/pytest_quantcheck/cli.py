"""The ``quantcheck`` command: quantize, perplexity, kld, hellaswag, winogrande, multiple-choice,
bench, memory, tensors, blame, recipe, demo-model, merge. No pytest here."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_quantcheck import __version__, machine
from pytest_quantcheck.backends import RunOptions, default_backend
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.evaluation import EvalTextError, ScoringProtocol, read_eval_text
from pytest_quantcheck.gguf_types import FILE_TYPES
from pytest_quantcheck.metrics.kld import DEFAULT_MAX_TOKENS, DEFAULT_TAIL_MASS, KLDResult
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.metrics.throughput import BenchResult, Sweep, ThroughputRun
from pytest_quantcheck.progress import LiveProgress, Progress
from pytest_quantcheck.tasks.files import DEFAULT_LIMIT, HELLASWAG, MODES, MULTIPLE_CHOICE, WINOGRANDE
from pytest_quantcheck.tasks.files import load as load_tasks
from pytest_quantcheck.variants import check_gguf_path, file_type, quantize


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def _list_of(item: Callable[[str], int]) -> Callable[[str], tuple[int, ...]]:
    """A parser of ``item`` values separated by commas (llama-bench's lists: ``-t 1,2,4``)."""
    def parse(text: str) -> tuple[int, ...]:
        parts = text.split(",")
        try:
            values = tuple(item(part.strip()) for part in parts)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(
                f"{exc}{f' in the list {text!r}' if len(parts) > 1 else ''}") from None
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"{text!r} lists a value twice; list each once")
        return values
    parse.__name__ = f"list of {item.__name__}"
    return parse


def _plot_path(text: str) -> Path:
    """A plot's file, checked before any measuring: its suffix picks the format."""
    path = Path(text)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise argparse.ArgumentTypeError(f"{text}: name a .png, .svg or .pdf file")
    return path


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1), got {value}")
    return value


def _run_args(p: argparse.ArgumentParser, threads: Callable[[str], Any] = _positive,
              threads_help: str = "CPU threads") -> None:
    p.add_argument("-t", "--threads", type=threads, default=None,
                   help=f"{threads_help} (default: one per physical core, as llama.cpp)")
    p.add_argument("-ngl", "--n-gpu-layers", type=_non_negative, default=0,
                   help="layers to offload to a GPU (default: 0)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")


def _shape_args(p: argparse.ArgumentParser) -> None:
    """The scoring protocol's batch shape: ``n_batch / n_ctx`` chunks side by side."""
    p.add_argument("-c", "--ctx-size", type=_positive, default=512,
                   help="tokens per chunk, as llama-perplexity -c (default: 512)")
    p.add_argument("-b", "--batch-size", type=_positive, default=2048,
                   help="tokens per batch, as llama-perplexity -b (default: 2048)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", type=Path, required=True, help="evaluation text")
    _shape_args(p)
    p.add_argument("--chunks", type=_positive, default=None,
                   help="score at most this many chunks (default: all)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write per-chunk results in the cache (default: an"
                   " unchanged model and text are never decoded twice)")
    _run_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantcheck", description="Quantize GGUF models and measure what quantization costs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a base GGUF (cached by content)")
    q.add_argument("base", type=Path, help="base model (F32, F16 or BF16 GGUF)")
    q.add_argument("type", help=f"file type: {', '.join(FILE_TYPES)}")
    q.add_argument("-o", "--output", type=Path, help="copy the result here (default: print the"
                   " cached file's path)")
    q.add_argument("--imatrix", type=Path, help="importance matrix from llama-imatrix")
    _run_args(q)

    p = sub.add_parser("perplexity", help="perplexity with llama-perplexity's protocol")
    p.add_argument("model", type=Path)
    _eval_args(p)

    k = sub.add_parser("kld", help="KL divergence of MODEL from REF, as llama-perplexity"
                       " --kl-divergence")
    k.add_argument("ref", type=Path, help="reference model (usually the base)")
    k.add_argument("model", type=Path)
    k.add_argument("--tail-mass", type=_probability, default=DEFAULT_TAIL_MASS,
                   help="reference probability that may go uncovered by kept tokens"
                   f" (default: {DEFAULT_TAIL_MASS:g})")
    k.add_argument("--max-tokens", type=_positive, default=DEFAULT_MAX_TOKENS,
                   help=f"most reference tokens kept per position (default: {DEFAULT_MAX_TOKENS})")
    _eval_args(k)

    b = sub.add_parser("bench", help="prompt processing and generation speed, as llama-bench;"
                       " lists (-t 1,2,4 -p 128,512) sweep every combination")
    b.add_argument("model", type=Path)
    b.add_argument("-p", "--n-prompt", type=_list_of(_non_negative), default=(512,),
                   help="prompt tokens of the pp test, or a comma-separated list of sizes;"
                   " 0 to skip it (default: 512)")
    b.add_argument("-n", "--n-gen", type=_list_of(_non_negative), default=(128,),
                   help="generated tokens of the tg test, or a comma-separated list of sizes;"
                   " 0 to skip it (default: 128)")
    b.add_argument("-r", "--repetitions", type=_positive, default=5,
                   help="timed repetitions of each test (default: 5)")
    b.add_argument("-b", "--batch-size", type=_positive, default=2048,
                   help="logical batch size (default: 2048)")
    b.add_argument("-ub", "--ubatch-size", type=_positive, default=512,
                   help="physical batch size (default: 512)")
    b.add_argument("--json", action="store_true", help="print every sample as JSON")
    b.add_argument("--plot", type=_plot_path, default=None, metavar="FILE",
                   help="draw tokens/s against threads here, one line per test (PNG, SVG or"
                   " PDF; needs matplotlib)")
    _run_args(b, _list_of(_positive), "CPU threads, or a comma-separated list to sweep")

    for mode, what in ((HELLASWAG, "HellaSwag accuracy (6 lines a task)"),
                       (WINOGRANDE, "Winogrande accuracy (the CSV with _)"),
                       (MULTIPLE_CHOICE, "multiple-choice accuracy (llama.cpp's binary file:"
                        " ARC, MMLU, TruthfulQA)")):
        limit = DEFAULT_LIMIT[mode]
        t = sub.add_parser(mode, help=f"{what}, as llama-perplexity --{mode}")
        t.add_argument("model", type=Path)
        t.add_argument("-f", "--file", type=Path, required=True, help="task file")
        t.add_argument("--tasks", type=_non_negative, default=limit,
                       help=f"score this many tasks, drawn as llama-perplexity --{mode}-tasks"
                       f" draws them; 0 = all (default: {limit or 'all'})")
        t.add_argument("-c", "--ctx-size", type=_positive, default=512,
                       help="context per sequence, as llama-perplexity -c (default: 512)")
        t.add_argument("-b", "--batch-size", type=_positive, default=2048,
                       help="tokens per batch, as llama-perplexity -b (default: 2048)")
        t.add_argument("-np", "--parallel", type=_positive, default=4,
                       help="parallel sequences, at least 4, as llama-perplexity -np"
                       " (default: 4)")
        t.add_argument("--json", action="store_true",
                       help="print accuracy, n_tasks and per-task correctness as JSON")
        _run_args(t)

    m = sub.add_parser("memory", help="peak resident (and GPU) memory of load plus one"
                       " scored chunk")
    m.add_argument("model", type=Path)
    _shape_args(m)
    _run_args(m)

    g = sub.add_parser("merge", help="merge the --quant-json reports of a run's shards into one"
                       " report (and baseline), as one run would have written them")
    g.add_argument("reports", type=Path, nargs="+", metavar="REPORT.json")
    g.add_argument("-o", "--output", type=Path, default=None, help="write the merged JSON here")
    g.add_argument("--markdown", type=Path, default=None, help="write the table as Markdown")
    g.add_argument("--junit", type=Path, default=None, help="write a JUnit file, one case a check")
    g.add_argument("--baseline-dir", type=Path, default=None,
                   help="where to write the merged baseline, when the shards updated it"
                   " (default: the run's baseline_dir)")
    w = sub.add_parser("tensors", help="what llama.cpp wrote into GGUF files: tensor types (count,"
                       " bytes), fallbacks from the file type's blocks, identical files")
    w.add_argument("models", type=Path, nargs="+", metavar="MODEL.gguf")
    w.add_argument("--json", action="store_true",
                   help="print per file the types, the data digest and each tensor's type and"
                   " SHA-256 as JSON")
    _blame_parsers(sub)
    d = sub.add_parser("demo-model", help="print the built-in demo model's path (builds it once)")
    d.add_argument("--eval-text", action="store_true",
                   help="print the path of its held-out evaluation text instead")
    _run_args(d)
    return parser


def _blame_parsers(sub: Any) -> None:
    from pytest_quantcheck.blame import BY

    a = sub.add_parser("blame", help="which tensor groups cause a variant's KL divergence, each"
                       " share with a confidence interval")
    a.add_argument("base", type=Path, help="base model (F32, F16 or BF16 GGUF)")
    a.add_argument("variant", help="a file type built from BASE, or a .gguf quantization of it")
    a.add_argument("--by", choices=BY, default="kind",
                   help="group tensors by kind, by kind x band of layers, or one by one"
                   " (default: kind)")
    a.add_argument("--plot", type=Path, default=None,
                   help="draw the shares with their intervals here (PNG or SVG)")
    a.add_argument("--min-chunks", type=_positive, default=4,
                   help="chunks of the first look (default: 4)")
    a.add_argument("--all-chunks", action="store_true",
                   help="measure every group on every chunk, no early stop")
    _eval_args(a)
    r = sub.add_parser("recipe", help="search per-group tensor types for the smallest file"
                       " within a KLD (or the least KLD within a size), verified by a full"
                       " evaluation, printed as a variants entry")
    r.add_argument("base", type=Path, help="base model (F32, F16 or BF16 GGUF)")
    r.add_argument("--from", dest="start", required=True,
                   help="stock file type to start from (its tensors get raised)")
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument("--max-kld", type=float, default=None,
                        help="largest mean KLD from BASE the recipe may have")
    target.add_argument("--max-size", type=_positive, default=None,
                        help="largest file size in bytes; the least KLD within it")
    r.add_argument("--by", choices=BY, default="kind",
                   help="groups whose types are chosen (default: kind)")
    r.add_argument("--name", default=None, help="the recipe's name (default: TYPE-recipe)")
    r.add_argument("--plot", type=Path, default=None,
                   help="draw the recipe beside the stock types on the trade-off plot (PNG or"
                   " SVG)")
    r.add_argument("--compare", default=None,
                   help="stock types to measure beside it, comma-separated (default: a few"
                   " around --from)")
    _eval_args(r)


def _blame(args: argparse.Namespace) -> int:
    from pytest_quantcheck.blame import blame, plot_blame

    check_gguf_path(args.base)
    read_eval_text(args.file)
    engine = Engine.default(_options(args), result_cache=not args.no_cache)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else (lambda _m: None)
    result = blame(args.base, args.variant, args.file, _protocol(args), by=args.by,
                   engine=engine, min_chunks=args.min_chunks, sequential=not args.all_chunks,
                   log=log)
    if args.plot:
        plot_blame(args.plot, result)
    if args.json:
        _dump(result.to_dict())
    else:
        for line in result.table():
            print(line)
    return 0


def _recipe(args: argparse.Namespace) -> int:
    """Exit status 0 when the verified recipe meets the target, 1 when none did."""
    from pytest_quantcheck.recipe_search import search

    check_gguf_path(args.base)
    read_eval_text(args.file)
    engine = Engine.default(_options(args), result_cache=not args.no_cache)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else (lambda _m: None)
    compare = None if args.compare is None else [t.strip() for t in args.compare.split(",")]
    for type_name in compare or ():
        file_type(type_name)
    result = search(args.base, args.start, args.file, _protocol(args), max_kld=args.max_kld,
                    max_size=args.max_size, by=args.by, engine=engine, name=args.name,
                    compare=compare, log=log)
    if args.plot:
        from pytest_quantcheck.report import plot_tradeoffs

        plot_tradeoffs(args.plot, result.tradeoff_points(),
                       {result.verified.name: "pass" if result.met else "fail"})
    if args.json:
        _dump(result.to_dict())
    else:
        for line in result.lines():
            print(line)
    return 0 if result.met else 1


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, verbose=args.verbose)


def _protocol(args: argparse.Namespace) -> ScoringProtocol:
    try:
        return ScoringProtocol(n_ctx=args.ctx_size, n_batch=args.batch_size,
                               n_chunks=getattr(args, "chunks", None))
    except ValueError as exc:
        raise EvalTextError(str(exc)) from None


def _bench(args: argparse.Namespace) -> int:
    """One value of each list: llama-bench's two tests and today's table. A list anywhere: every
    combination (:func:`~pytest_quantcheck.bench.sweep_settings`), a row each."""
    from pytest_quantcheck.bench import Bench, sweep_settings

    if args.plot is not None:
        _need_matplotlib("--plot")
    threads = args.threads or (None,)
    options = RunOptions(n_threads=threads[0], n_gpu_layers=args.n_gpu_layers,
                         verbose=args.verbose)
    bench = Bench(default_backend(), options)
    results: Sequence[BenchResult]
    if len(threads) == len(args.n_prompt) == len(args.n_gen) == 1:
        with machine.timing():  # as the plugin's timings: never beside another run's heavy step
            run = bench.throughput(args.model, args.n_prompt[0], args.n_gen[0], args.repetitions,
                                   args.batch_size, args.ubatch_size)
        if args.json:
            _dump({"model": str(args.model), **run.to_dict(),
                   "tests": [r.to_dict() for r in run.tests.values()]})
        else:
            _print_bench(args.model, run)
        results, cpu = list(run.tests.values()), run.fingerprint.cpu
    else:
        settings = sweep_settings([t or options.threads() for t in threads], args.n_prompt,
                                  args.n_gen)
        with machine.timing():
            sweep = bench.sweep(args.model, settings, args.repetitions, args.batch_size,
                                args.ubatch_size)
        if args.json:
            _dump({"model": str(args.model), **sweep.to_dict()})
        else:
            _print_sweep(args.model, sweep)
        results, cpu = sweep.results, sweep.fingerprint.cpu
    if args.plot is not None:
        from pytest_quantcheck.report import plot_scaling

        plot_scaling(args.plot, results, f"{args.model.name} on {cpu}")
    return 0


def _need_matplotlib(option: str) -> None:
    """Before a long measurement, not after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from pytest_quantcheck.report import PLOTS_HINT

        raise QuantcheckError(f"{option}: {PLOTS_HINT}") from None


def _print_sweep(model: Path, sweep: Sweep) -> None:
    """llama-bench's table, a row a setting, with each mean's 95 % interval and, over several
    thread counts, each test's speed-up from the first."""
    size = model.stat().st_size / 2**20
    first: dict[str, BenchResult] = {}  # each test at the first thread count
    for r in sweep.results:
        first.setdefault(r.test, r)
    scaling = len({r.n_threads for r in sweep.results}) > 1
    print(f"machine: {sweep.fingerprint.summary(threads=False)};"
          f" {' '.join(sweep.fingerprint.cpu_features)}")
    print("| model | size | threads | n_batch | n_ubatch | test | t/s | 95 % CI of t/s |"
          + (f" vs {sweep.results[0].n_threads} threads |" if scaling else "")
          + " roofline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
          + (" ---: |" if scaling else "") + " ---: |")
    for r in sweep.results:
        low, high = r.interval()
        spread = "n/a (1 repetition)" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"
        eff = sweep.efficiency(r)
        roof = "" if eff is None else f"{eff:.0%} of {sweep.bandwidth[r.n_threads] / 1e9:.1f} GB/s"
        ratio = f" {r.mean / first[r.test].mean:.2f}x |" if scaling else ""
        print(f"| {model.name} | {size:.2f} MiB | {r.n_threads} | {r.n_batch} | {r.n_ubatch} |"
              f" {r.test} | {r.mean:.2f} ± {r.sd:.2f} | {spread} |{ratio} {roof} |")


def _print_bench(model: Path, run: ThroughputRun) -> None:
    size = model.stat().st_size / 2**20
    print(f"machine: {run.fingerprint.summary()}; {' '.join(run.fingerprint.cpu_features)}")
    print("| model | size | threads | n_batch | n_ubatch | test | t/s | roofline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in run.tests.values():
        eff = run.efficiency() if r.n_gen else None
        roof = "" if eff is None else f"{eff:.0%} of {run.bandwidth / 1e9:.1f} GB/s"  # type: ignore[operator]
        print(f"| {model.name} | {size:.2f} MiB | {r.n_threads} | {r.n_batch} |"
              f" {r.n_ubatch} | {r.test} | {r.mean:.2f} ± {r.sd:.2f} | {roof} |")


def _print_perplexity(model: Path, res: PerplexityResult, seconds: float) -> None:
    print(f"model       {model}")
    print(f"chunks      {res.n_chunks} of {res.n_ctx} tokens, {res.n_tokens} tokens scored")
    print(f"perplexity  {res.ppl:.4f} +/- {res.ppl_err:.5f}")
    print(f"time        {seconds:.2f} s")


def _pm(e: Any, scale: float = 1.0, digits: int = 6) -> str:
    return f"{scale * e.value:.{digits}f} ± {scale * e.err:.{digits}f}"


def _print_kld(res: KLDResult, seconds: float) -> None:
    cover = "the whole vocabulary" if res.exact else (
        f"kept tokens + remainder; uncovered reference mass {res.ref_tail_mass:.2e},"
        f" full-vocabulary KLD at most {res.kld_tail_bound:.2e} above")
    print(f"scored {res.n_tokens} tokens in {res.n_chunks} chunks; KLD over {cover}")
    print(f"Mean PPL(Q)                   : {_pm(res.ppl)}")
    print(f"Mean PPL(base)                : {_pm(res.ppl_ref)}")
    print(f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * res.ln_ppl_cor:6.2f}%")
    print(f"Mean ln(PPL(Q)/PPL(base))     : {_pm(res.ln_ppl_ratio)}")
    print(f"Mean PPL(Q)/PPL(base)         : {_pm(res.ppl_ratio)}")
    print(f"Mean PPL(Q)-PPL(base)         : {_pm(res.ppl_diff)}")
    print(f"Mean    KLD: {_pm(res.kld)}")
    print(f"Maximum KLD: {res.kld_max:10.6f}")
    for q, v in res.kld_percentiles.items():
        if q > 0.5:
            print(f"{100 * q:4.1f}%   KLD: {v:10.6f}")
    print(f"Median  KLD: {res.kld_median:10.6f}")
    for q, v in res.kld_percentiles.items():
        if q < 0.5:
            print(f"{100 * q:4.1f}%   KLD: {v:10.6f}")
    print(f"Minimum KLD: {res.kld_min:10.6f}")
    print(f"Mean    Δp: {_pm(res.p_diff, 100, 3)} %")
    print(f"Maximum Δp: {100 * res.p_diff_max:6.3f}%")
    print(f"Median  Δp: {100 * res.p_diff_median:6.3f}%")
    print(f"Minimum Δp: {100 * res.p_diff_min:6.3f}%")
    print(f"RMS Δp    : {_pm(res.rms_p_diff, 100, 3)} %")
    print(f"Same top p: {_pm(res.same_top, 100, 3)} %")
    print(f"time        {seconds:.2f} s")


def _json_default(value: Any) -> Any:
    return str(value)


def _dump(obj: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    print(json.dumps(clean(obj), indent=1, default=_json_default))


def _merge(args: argparse.Namespace) -> int:
    """Exit status 0 when every merged check passed, 1 otherwise (the gate of a sharded run)."""
    from pytest_quantcheck import baseline, report

    reports = [report.read_report(path) for path in args.reports]
    settings, outcomes = report.merge_reports(reports)
    stored = [r.baseline for r in reports if r.baseline]
    document = None
    if stored:
        # merged as the controller of a pytest-xdist run merges its workers' records: a model
        # measured in several shards keeps every shard's sections
        keys, records = baseline.merge_documents(
            ((b["keys"], b["records"]) for b in stored), int(settings.get("baseline_runs", 10)))
        document = {"file": stored[0]["file"], "keys": keys, "records": records}
        folder = args.baseline_dir or Path(settings["baseline_dir"])
        baseline.update(folder / stored[0]["file"], stored[0]["keys"], records,
                        int(settings.get("baseline_runs", 10)))
        print(f"baseline written to {folder / stored[0]['file']}", file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        models = {name: row for r in reports for name, row in r.models.items()}
        args.output.write_text(report.to_json(outcomes, settings, document, models))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown(outcomes))
    if args.junit:
        report.write_junit(args.junit, outcomes)
    for line in report.text_table(outcomes):
        print(line)
    print(f"{report.count_head(outcomes)} ({len(reports)} reports)")
    return 1 if any(o.blocking for o in outcomes) else 0


@contextlib.contextmanager
def _live(what: str, unit: str = "chunks") -> Iterator[Progress | None]:
    """A long step's progress on standard error, where a person watches it (a terminal); none
    in a log or a pipe."""
    if not sys.stderr.isatty():
        yield None
        return
    err = sys.stderr
    live = LiveProgress(err.write, lambda line: err.write(f"\r{line}\x1b[K"),
                        lambda: err.write("\n"))
    try:
        yield live.step(what, unit)
    finally:
        live.end()
        err.flush()


def _tasks(args: argparse.Namespace) -> int:
    check_gguf_path(args.model)
    load_tasks(args.file, args.command, args.tasks)  # a bad file fails before llama.cpp loads
    t0 = time.perf_counter()
    with _live(f"{args.command} tasks of {args.model.name}", "tasks") as progress:
        result = Engine.default(_options(args)).tasks(
            args.model, args.file, args.command, args.tasks, args.ctx_size, args.parallel,
            args.batch_size, progress)
    seconds = time.perf_counter() - t0
    if args.json:
        _dump({"model": str(args.model), "seconds": seconds, **result.to_dict()})
    else:
        print(f"model       {args.model}")
        print(f"tasks       {result.n_tasks} of {result.n_available} in {args.file}")
        print(f"time        {seconds:.2f} s")
        print(result.readable())
    return 0


def _tensors(args: argparse.Namespace) -> int:
    from pytest_quantcheck.gguf_types import file_type_name
    from pytest_quantcheck.tensor_mix import fallback_notice, identical_notices, read_mix

    for path in args.models:  # every file checked before any is read
        check_gguf_path(path)
    stems = [p.stem for p in args.models]
    names = {p: p.stem if stems.count(p.stem) == 1 else str(p) for p in args.models}
    mixes = {p: read_mix(p) for p in args.models}
    fallbacks = {p: fallback_notice(names[p], None, m) for p, m in mixes.items()}
    notices = [*identical_notices({names[p]: m.data_sha256() for p, m in mixes.items()}),
               *(n for n in fallbacks.values() if n)]
    if args.json:
        _dump({"files": {str(p): {"name": names[p], "file_type": file_type_name(m.file_type),
                                  "tensor_types": m.by_type(),
                                  "tensor_data_sha256": m.data_sha256(),
                                  "fallback": fallbacks[p], "tensors": m.hashes()}
                         for p, m in mixes.items()},
               "notices": notices})
        return 0
    for p, m in mixes.items():
        total = sum(t["bytes"] for t in m.by_type().values())
        print(f"{p}  ({file_type_name(m.file_type) or 'file type not recorded'},"
              f" {len(m.tensors)} tensors, {total / 2**20:.2f} MiB)")
        for type_name, row in m.by_type().items():
            print(f"  {type_name:<8} {row['tensors']:>5} tensors  {row['bytes'] / 2**20:>10.2f} MiB"
                  f"  {row['bytes'] / total:>6.1%}")
    for notice in notices:
        print(f"notice: {notice}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        return _merge(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "tensors":
        return _tensors(args)
    if args.command == "blame":
        return _blame(args)
    if args.command == "recipe":
        return _recipe(args)
    if args.command == "quantize":
        file_type(args.type)  # bad names and files fail before llama.cpp is even loaded
        check_gguf_path(args.base)
        variant = quantize(args.base, args.type, backend=default_backend(),
                           imatrix=args.imatrix, n_threads=args.threads)
        if args.output:
            tmp = args.output.with_name(f".{args.output.name}.partial")
            shutil.copyfile(variant.path, tmp)
            tmp.replace(args.output)
            print(args.output)
        else:
            print(variant.path)
        return 0
    if args.command == "demo-model":
        from pytest_quantcheck.demo.model import data_path, demo_model_path

        if args.eval_text:
            print(data_path("eval.txt"))
        else:
            log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else (lambda _m: None)
            print(demo_model_path(options=_options(args), log=log))
        return 0

    if args.command in MODES:
        return _tasks(args)
    # Inputs are checked before llama.cpp is loaded: a typo fails fast and in one line.
    proto = _protocol(args)
    for path in (getattr(args, "ref", None), args.model):
        if path is not None:
            check_gguf_path(path)
    if args.command in ("perplexity", "kld"):
        read_eval_text(args.file)
    engine = Engine.default(_options(args), result_cache=not getattr(args, "no_cache", False))
    if args.command == "memory":
        usage = engine.memory(args.model, proto)
        if args.json:
            _dump({"model": str(args.model), "protocol": proto.describe(), **usage.to_dict()})
        else:
            print(f"model       {args.model}")
            print(f"workload    load, then one chunk of {proto.n_ctx} tokens, as scoring decodes it")
            print(f"memory      {usage.describe()}")
        return 0
    t0 = time.perf_counter()
    if args.command == "perplexity":
        with _live(f"perplexity of {args.model.name}") as progress:
            ppl = engine.perplexity(args.model, args.file, proto, progress)
        seconds = time.perf_counter() - t0
        if args.json:
            _dump({"model": str(args.model), "text": str(args.file), "protocol": proto.describe(),
                   "seconds": seconds, **ppl.to_dict(tokens=True)})
        else:
            _print_perplexity(args.model, ppl, seconds)
        return 0
    with _live(f"log-probabilities of {args.ref.name}, then KL divergence of"
               f" {args.model.name}") as progress:
        kld = engine.kl_divergence(args.ref, args.model, args.file, proto, args.tail_mass,
                                   args.max_tokens, progress)
    seconds = time.perf_counter() - t0
    if args.json:
        _dump({"ref": str(args.ref), "model": str(args.model), "text": str(args.file),
               "protocol": proto.describe(), "seconds": seconds, **kld.to_dict()})
    else:
        _print_kld(kld, seconds)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except QuantcheckError as exc:  # one line naming the file and the fix, no traceback
        print(f"quantcheck: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
