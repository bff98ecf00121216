"""pytest glue: options, markers, fixtures and hooks. Thin by design; loading it must stay cheap
and must not import llama_cpp (the backend is created when a model is first needed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_quantcheck import __version__, checks, hookspec, report
from pytest_quantcheck.backends import default_backend, physical_cores
from pytest_quantcheck.cache import cache_root
from pytest_quantcheck.config import KEYS, ConfigError, Layer, Settings, merge, read_pyproject, read_yaml
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.gguf_types import FILE_TYPES
from pytest_quantcheck.models import QuantModel
from pytest_quantcheck.progress import LiveProgress
from pytest_quantcheck.session import QuantSession, ReportPaths
from pytest_quantcheck.variants import (
    VariantError,
    built_for_comparison,
    check_unquantized,
)
from pytest_quantcheck.xdist_hooks import XdistHooks

session_key = pytest.StashKey[QuantSession]()
item_checks_key = pytest.StashKey[list[checks.Check]]()
usage_error_key = pytest.StashKey[str]()
skipped_here_key = pytest.StashKey[bool]()  # every check of the test was skipped

_FLAGS = {key: f"--quant-{key.replace('_', '-')}" for key in KEYS if key != "baseline_dir"}


# ---- options ---------------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantcheck", "quantization regression checks (pytest-quantcheck)")
    helps = {
        "model": "base GGUF model (default: the built-in demo model)",
        "variants": "comma-separated variants: file types (Q8_0,Q4_K_M), 'base' or .gguf paths",
        "reference": "what relative checks compare with (default: base)",
        "eval_text": "evaluation text, or named texts (name=path,name=path; the first is the"
        " default, checks pick one with text=) (default: the demo model's held-out text)",
        "n_ctx": "tokens per chunk (default: 512)",
        "n_batch": "tokens per batch (default: 2048)",
        "chunks": "score at most this many chunks (default: all)",
        "threads": "CPU threads (default: one per physical core)",
        "n_gpu_layers": "layers offloaded to a GPU (default: 0)",
        "alpha": "significance level of every check (default: 0.05)",
        "mode": "detect: fail on significant exceedance; prove: pass only within the tolerance"
        " with confidence (default: detect)",
        "correction": "none or holm: correct p-values across the checks of a run (default: none)",
        "baseline_ignore": "comma-separated baseline keys not to check",
        "imatrix": "importance matrix for the IQ types (default: none)",
        "bench_prompt": "prompt tokens of the pp throughput test, 0 to skip it (default: 512)",
        "bench_gen": "generated tokens of the tg throughput test, 0 to skip it (default: 128)",
        "bench_repetitions": "timed repetitions of each throughput test (default: 5)",
        "fingerprint_ignore": "comma-separated machine fingerprint fields not to check when"
        " comparing throughput or memory with a baseline",
        "baseline_runs": "separate runs a throughput baseline keeps per machine; each"
        " --quant-update-baseline adds one (default: 10)",
        "throughput_confirm": "a failing throughput check measures again and fails only if that"
        " fails too (true/false, default: false)",
        "tasks": "task sets as name=file,name=file: HellaSwag, Winogrande or multiple-choice"
        " files (default: the demo model's when it is the model)",
        "task_limit": "tasks scored per task set, drawn as llama-perplexity draws them; 0: all"
        " (default: llama-perplexity's, 400 HellaSwag tasks and all others)",
        "task_parallel": "parallel sequences when scoring tasks, as llama-perplexity -np"
        " (default: 4)",
        "sequential": "decide perplexity, KL and task checks in looks of growing size, stopping"
        " each model when its checks are decided; chunks is the maximum (true/false, default:"
        " true)",
        "min_chunks": "chunks of the first look, before which nothing is decided (default: 8)",
        "min_tasks": "tasks of a task check's first look, before which nothing is decided"
        " (default: 100)",
        "result_cache": "keep per-chunk results by content, so an unchanged model is never"
        " decoded twice (true/false, default: true)",
        "blame": "a failing perplexity, KL or top-1 check names the tensor groups that cause"
        " the variant's KLD, with intervals (costs two passes a group; true/false, default:"
        " false)",
        "verbose": "show llama.cpp's log (true/false, default: false)",
    }
    for key, flag in _FLAGS.items():
        group.addoption(flag, dest=f"quant_{key}", default=None, metavar=key.upper(),
                        help=helps[key])
        parser.addini(f"quant_{key}", helps[key], default=None)
    parser.addini("quant_baseline_dir", "where baselines live (default: baselines)", default=None)
    group.addoption("--quant-baseline", dest="quant_baseline", nargs="?", const="", default=None,
                    metavar="DIR", help="compare with stored baselines (in DIR, default: the"
                    " configured baseline_dir)")
    group.addoption("--quant-update-baseline", dest="quant_update_baseline", action="store_true",
                    help="write or refresh the baselines from this run")
    group.addoption("--quant-shard", dest="quant_shard", default=None, metavar="K/N",
                    help="check the K-th of N shards of the variants (every N-th from the K-th;"
                    " tests without quant_model run in shard 1); merge the shards' --quant-json"
                    " reports with `quantcheck merge`")
    group.addoption("--quant-json", dest="quant_json", default=None, metavar="PATH",
                    help="write every check's numbers as JSON to PATH")
    group.addoption("--quant-junit", dest="quant_junit", default=None, metavar="PATH",
                    help="write a JUnit XML report with one testcase per check to PATH")
    group.addoption("--quant-markdown", dest="quant_markdown", default=None, metavar="PATH",
                    help="write the table of checks as Markdown to PATH")
    group.addoption("--quant-plot", dest="quant_plot", default=None, metavar="PATH",
                    help="plot bits per weight against perplexity, KL divergence and tokens/s,"
                    " one point per variant, to PATH (.png or .svg; needs matplotlib)")


def _settings(config: pytest.Config) -> Settings:
    root = Path(config.rootpath)
    layers = [layer for layer in (read_pyproject(root / "pyproject.toml"),
                                  read_yaml(root / "quantcheck.yaml")) if layer]
    ini_path = str(config.inipath) if config.inipath else "ini file"
    ini = {key: config.getini(f"quant_{key}") for key in KEYS}
    layers.append(Layer(ini_path, root, {k: v for k, v in ini.items() if v is not None}))
    cli = {key: getattr(config.option, f"quant_{key}") for key in _FLAGS}
    if config.option.quant_baseline:
        cli["baseline_dir"] = config.option.quant_baseline
    layers.append(Layer("command line", Path(config.invocation_params.dir),
                        {k: v for k, v in cli.items() if v is not None}))
    settings = merge(layers)
    if "baseline_dir" not in settings.sources:
        settings = replace(settings, baseline_dir=root / settings.baseline_dir)
    for key in ("model", "eval_text", "imatrix"):
        path = getattr(settings, key)
        if path is not None and not path.is_file():
            raise ConfigError(settings.sources[key], key, f"{path} is not a file; fix the path")
    for name, recipe in settings.recipes.items():
        if recipe.imatrix is not None and not recipe.imatrix.is_file():
            raise ConfigError(settings.sources["variants"], f"variants.{name}.imatrix",
                              f"{recipe.imatrix} is not a file; fix the path")
    for name, text in settings.eval_texts.items():
        if not text.is_file():
            raise ConfigError(settings.sources["eval_text"], f"eval_text.{name}",
                              f"{text} is not a file; fix the path")
    for name, spec in settings.tasks.items():
        if not spec.file.is_file():
            raise ConfigError(settings.sources["tasks"], f"tasks.{name}",
                              f"{spec.file} is not a file; fix the path")
    built = [v for v in (*settings.variants, settings.reference)
             if v.upper() in FILE_TYPES or v in settings.recipes]
    if settings.model is not None and built:  # a quantized base fails every variant: say so now
        try:
            check_unquantized(settings.model)
        except VariantError as exc:
            raise ConfigError(settings.sources["model"], "model", str(exc)) from None
        except QuantcheckError:
            pass  # not a sound GGUF: the test that loads it says so, as for any model file
    return settings


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--quant-shard K/N``: 1 <= K <= N."""
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise pytest.UsageError(f"--quant-shard {text}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(k), int(n)


def _worker_count(config: pytest.Config) -> int:
    """pytest-xdist workers of this run (1 without xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    n = getattr(config.option, "numprocesses", None)
    return n if isinstance(n, int) and n > 0 and getattr(config.option, "dist", "no") != "no" else 1


def _worker_threads(workers: int) -> int:
    return max(1, physical_cores() // workers)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, line in checks.marker_lines().items():
        config.addinivalue_line("markers", f"{name}: {line}")
    try:
        settings = _settings(config)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    workers = _worker_count(config)
    if settings.threads is None and workers > 1 and hasattr(config, "workerinput"):
        # Each worker runs llama.cpp: with all cores each, N workers oversubscribe them N times.
        # A timing holds the machine alone (machine.timing), so it runs on all of them, as a
        # serial run's does: a baseline recorded either way compares under either.
        settings = replace(settings, threads=_worker_threads(workers),
                           timing_threads=physical_cores())
    plot = config.option.quant_plot
    if plot:
        if Path(plot).suffix.lower() not in (".png", ".svg"):
            raise pytest.UsageError(f"--quant-plot {plot}: give a .png or .svg file name")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise pytest.UsageError(f"--quant-plot {plot}: {report.PLOTS_HINT}") from None
    mode = ("update" if config.option.quant_update_baseline
            else "compare" if config.option.quant_baseline is not None else "off")

    def make_backend() -> Any:
        custom = config.hook.pytest_quantcheck_make_backend(config=config)
        if custom is not None:
            return custom
        return default_backend()

    qs = QuantSession(settings, make_backend, mode, shard=parse_shard(config.option.quant_shard))
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("quantcheck_exchange"):
        qs.exchange = Path(workerinput["quantcheck_exchange"])
    config.stash[session_key] = qs
    if config.pluginmanager.hasplugin("xdist"):  # its hooks exist only with it (as syrupy does)
        config.pluginmanager.register(XdistHooks(qs), "quantcheck-xdist")


def _check_variant_files(settings: Settings) -> None:
    """Every .gguf file named in ``variants`` or ``reference`` exists. Checked once every
    ``pytest_configure`` has run, not in ours: a project's conftest may build its candidate
    there (examples/custom_variants does), and a missing file must still stop the run before
    any model is made."""
    for key, names in (("variants", settings.variants), ("reference", (settings.reference,))):
        for name in names:
            path = settings.bases.get(key, Path.cwd()) / Path(name).expanduser()
            if name.lower().endswith(".gguf") and not path.is_file():
                raise ConfigError(settings.sources[key], key, f"{path} is not a file; fix the path")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A missing variant file stops the run (see :func:`_check_variant_files`). Long steps
    show their progress where a person watches: on an interactive terminal, not under -q, not
    in a CI log, not on a pytest-xdist worker (nobody sees its output)."""
    config = session.config
    try:
        _check_variant_files(config.stash[session_key].settings)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if (tr is None or not tr.isatty() or config.get_verbosity() < 0 or os.environ.get("CI")
            or hasattr(config, "workerinput")):
        return

    def start(line: str) -> None:
        tr.ensure_newline()  # off pytest's line of dots
        tr.write(line)

    def end() -> None:
        # the progress line stays; pytest ends it before its next output, as it ends a line
        # of dots (ensure_newline and a new file's line both start on a new line)
        tr.currentfspath = "quantcheck progress"

    config.stash[session_key].models.store.live = LiveProgress(
        start, lambda line: tr.rewrite(line, erase=True), end)


def pytest_report_header(config: pytest.Config) -> str:
    qs = config.stash[session_key]
    s = qs.settings
    model = s.model or "built-in demo model"
    workers = _worker_count(config)
    threads = (f"threads {s.threads}" if s.threads is not None
               else f"threads {physical_cores()}" if workers == 1
               else f"threads {_worker_threads(workers)} per worker ({physical_cores()} physical"
               f" cores / {workers} workers; timings on {physical_cores()}, as a serial run)")
    shard = f" (shard {qs.shard[0]}/{qs.shard[1]})" if qs.shard else ""
    return (f"quantcheck: {__version__}, model {model}, variants {', '.join(qs.variants())}{shard},"
            f" mode {s.mode}, alpha {s.alpha:g}, {threads}, cache {cache_root()}")


# ---- collection ------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "quant_model" in metafunc.fixturenames:
        variants = metafunc.config.stash[session_key].variants()
        metafunc.parametrize("quant_model", variants, indirect=True, ids=list(variants),
                             scope="session")


def _registered_markers(config: pytest.Config) -> frozenset[str]:
    """Markers the project registers (``markers`` ini lines, ``name(args): help``)."""
    return frozenset(line.split(":")[0].split("(")[0].strip() for line in config.getini("markers"))


def _item_checks(item: pytest.Item, settings: Settings, registered: frozenset[str] = frozenset(),
                 ad_hoc: dict[str, str] | None = None) -> list[checks.Check]:
    """The item's quantcheck markers, parsed; a ``pytest.UsageError`` names what is wrong: a
    bad argument, an ``of=`` that names no model, or a marker one slip away from a check's
    name (without ``--strict-markers`` pytest only warns of it, and the check would never run).
    ``ad_hoc`` gathers the file types an ``of=`` has built for its comparison alone."""
    found = []
    for mark in item.iter_markers():
        if mark.name not in checks.REGISTRY:
            meant = None if mark.name in registered else checks.misspelt(mark.name)
            if meant:
                raise pytest.UsageError(
                    f"{item.nodeid}: unknown marker @pytest.mark.{mark.name}; did you mean"
                    f" {meant}? (a misspelt check never runs)")
            continue
        try:
            check = checks.parse(mark.name, mark.args, dict(mark.kwargs))
        except checks.CheckArgumentError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        conflict = check.kind.conflict(check.args, settings)
        if conflict:
            raise pytest.UsageError(f"{item.nodeid}: {check.label} {conflict}")
        of = check.args.get("of")
        if isinstance(of, str):
            try:
                if built_for_comparison(of, settings) and ad_hoc is not None:
                    ad_hoc.setdefault(of.upper(), f"{item.nodeid} ({check.label})")
            except VariantError as exc:
                raise pytest.UsageError(f"{item.nodeid}: {check.label}: {exc}") from None
        found.append(check)
    if found and "quant_model" not in getattr(item, "fixturenames", ()):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{found[0].marker} needs a model to check; add the"
            " quant_model fixture to the test's arguments")
    return found


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only the checks that will run count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = config.stash[session_key]
    if session.shard is not None and session.shard[0] > 1:  # the other tests run in shard 1
        kept = [i for i in items if "quant_model" in getattr(i, "fixturenames", ())]
        if len(kept) < len(items):
            kept_ids = {id(i) for i in kept}
            config.hook.pytest_deselected(items=[i for i in items if id(i) not in kept_ids])
            items[:] = kept
    collected: list[tuple[checks.Check, str]] = []
    registered = _registered_markers(config)
    ad_hoc: dict[str, str] = {}
    for item in items:
        try:
            found = _item_checks(item, session.settings, registered, ad_hoc)
        except pytest.UsageError as exc:
            if not hasattr(config, "workerinput"):
                raise
            # A pytest-xdist worker cannot stop the run with a usage error (the controller
            # reports an INTERNALERROR): the test fails at setup with the same one line.
            item.stash[usage_error_key] = str(exc)
            continue
        if not found:
            continue
        item.stash[item_checks_key] = found
        variant = item.callspec.params["quant_model"]  # type: ignore[attr-defined]
        collected.extend((check, variant) for check in found)
    for spec, where in ad_hoc.items():  # said, so that a gate never widens its work unseen
        session.notes.append((f"notice: {spec} is not in variants; it is built from the base for"
                              f" the comparison of {where}, and not checked itself", False))
    session.collect(collected)


def pytest_runtest_setup(item: pytest.Item) -> None:
    problem = item.stash.get(usage_error_key, None)
    if problem is not None:
        pytest.fail(problem, pytrace=False)


# ---- running ---------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    found = item.stash.get(item_checks_key, None)
    if not found:
        return (yield)
    qs = item.config.stash[session_key]
    model = item.funcargs["quant_model"]  # type: ignore[attr-defined]
    where = (item.nodeid, item.location[0], (item.location[1] or 0) + 1)
    try:
        result = yield  # the test's own body; if it failed, its failure stands
    except BaseException as exc:  # its checks never ran: say so in every report
        why = ("the test was skipped before its checks ran" if isinstance(exc, pytest.skip.Exception)
               else f"the test failed ({type(exc).__name__}) before its checks ran")
        qs.not_decided(found, model.name, why, where)
        raise
    decided = qs.decide_test(found, model, where)
    item.user_properties.extend(decided.properties)
    if decided.problems:
        pytest.fail("\n".join(decided.problems), pytrace=False)
    if decided.skipped and len(decided.skipped) == len(found):  # nothing else was checked
        item.stash[skipped_here_key] = True
        pytest.skip("; ".join(decided.skipped))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test whose checks were all skipped is reported at the test, where the user looks, not
    at the plugin line that skipped it."""
    report = yield
    if (call.when == "call" and report.skipped and item.stash.get(skipped_here_key, False)
            and isinstance(report.longrepr, tuple)):
        path, line = item.reportinfo()[:2]
        report.longrepr = (os.fspath(path), (line or 0) + 1, report.longrepr[2])
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash[session_key]
    # Baseline news is written by sessionfinish, which runs first; printed here, on lines of
    # its own (under pytest-xdist the progress line may still be open at sessionfinish).
    for text, red in session.notes:
        terminalreporter.write_line(f"quantcheck: {text}", red=red)
    if session.steps:  # quantizing and evaluating take seconds to minutes: say where time went
        terminalreporter.write_sep("-", "quantcheck steps")
        for step in session.steps:
            terminalreporter.write_line(step)
    for line in session.annotations:  # GitHub reads a workflow command only at a line's start
        terminalreporter.write_line(line)
    cached = session.cache_note()
    if cached:
        terminalreporter.write_line(f"quantcheck: {cached}")
    for notice in session.tensor_notes():
        terminalreporter.write_line(f"quantcheck: notice: {notice}", yellow=True)
    if not session.outcomes:
        return
    terminalreporter.write_sep("=", "quantcheck summary")
    *table, counts = report.text_table(session.outcomes)
    for line in table:
        terminalreporter.write_line(line)
    blocking = any(o.blocking for o in session.outcomes)
    undecided = any(o.verdict in (checks.SKIPPED, checks.ERROR) for o in session.outcomes)
    terminalreporter.write_line(f"quantcheck: {counts}", red=blocking,
                                yellow=undecided and not blocking, green=not (blocking or undecided))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    qs = config.stash.get(session_key, None)
    if qs is None:
        return
    if hasattr(config, "workerinput"):  # a pytest-xdist worker reports to the controller
        config.workeroutput["quantcheck"] = qs.worker_payload()  # type: ignore[attr-defined]
        return
    if qs.exchange is not None:
        shutil.rmtree(qs.exchange, ignore_errors=True)
    if not qs.write_baseline():  # written once, by the controller, with every worker's records
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    o = config.option
    json_path, junit, markdown, plot = (Path(p) if p else None for p in (
        o.quant_json, o.quant_junit, o.quant_markdown, o.quant_plot))
    annotations = qs.write_reports(ReportPaths(json_path, junit, markdown, plot,
                                               github=os.environ.get("GITHUB_ACTIONS") == "true"))
    qs.annotations = annotations  # printed with the summary, on lines of their own


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def quant_session(pytestconfig: pytest.Config) -> QuantSession:
    """The session object: settings, models, metrics, outcomes."""
    return pytestconfig.stash[session_key]


def _model(session: QuantSession, spec: str) -> QuantModel:
    try:
        return session.model(spec)
    except QuantcheckError as exc:  # one line naming the file and the fix, no plugin traceback
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no "During handling..." chain


@pytest.fixture(scope="session")
def quant_model(request: pytest.FixtureRequest, quant_session: QuantSession) -> QuantModel:
    """Each configured variant in turn (test ids are the variant names)."""
    return _model(quant_session, request.param)


@pytest.fixture(scope="session")
def quant_reference(quant_session: QuantSession) -> QuantModel:
    """The model relative checks compare with (``reference`` setting; default: the base)."""
    return _model(quant_session, quant_session.settings.reference)


@pytest.fixture(scope="session")
def quant_eval_text(quant_session: QuantSession) -> Path:
    """The evaluation text every metric is computed on."""
    return quant_session.eval_text()


@pytest.fixture(scope="session")
def quantize(quant_session: QuantSession) -> Callable[[str], QuantModel]:
    """Build an ad-hoc variant inside a test: ``quantize("Q3_K_S")`` (cached by content)."""
    return lambda spec: _model(quant_session, spec)
