"""``quantcheck bench`` with lists, as llama-bench takes them: every combination of thread counts
and test sizes, in llama-bench's order, each at its own thread count; the table, the JSON and the
scaling plot; the lists' parse errors. Single values keep the command's old output."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pytest_quantcheck import cli, machine
from pytest_quantcheck.bench import Bench, Setting, sweep_settings
from pytest_quantcheck.stats import mean_interval

from fakes import FakeBackend, write_fake_gguf

GB = 1e9


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[FakeBackend]:
    """The command on the fake backend (the backends it made, to look at), and a memory
    bandwidth of 1 GB/s per thread instead of the probe's."""
    made: list[FakeBackend] = []

    def backend() -> FakeBackend:
        made.append(FakeBackend())
        return made[-1]

    monkeypatch.setattr(cli, "default_backend", backend)
    monkeypatch.setattr(machine, "memory_bandwidth", lambda threads: threads * GB)
    return made


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_fake_gguf(tmp_path / "m.gguf", speed=20_000)


def run(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    assert cli.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_settings_are_llama_benchs_order() -> None:
    assert sweep_settings([1, 2], [128, 512], [32]) == [
        Setting(1, 128, 0), Setting(1, 512, 0), Setting(1, 0, 32),
        Setting(2, 128, 0), Setting(2, 512, 0), Setting(2, 0, 32)]
    # 0 is no test, as llama-bench's -p 0
    assert sweep_settings([4], [0], [16, 0]) == [Setting(4, 0, 16)]


def test_every_setting_runs_at_its_thread_count(model: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "memory_bandwidth", lambda threads: threads * GB)
    backend = FakeBackend()
    sweep = Bench(backend).sweep(model, sweep_settings([1, 3], [40, 24], [7]), repetitions=2,
                                 n_batch=16, n_ubatch=8)
    assert [(r.n_threads, r.test, r.n_prompt, r.n_gen) for r in sweep.results] == [
        (1, "pp40", 40, 0), (1, "pp24", 24, 0), (1, "tg7", 0, 7),
        (3, "pp40", 40, 0), (3, "pp24", 24, 0), (3, "tg7", 0, 7)]
    # one load per thread count (llama.cpp fixes the threads at load), the threads set there
    assert [m.options.n_threads for m in backend.models] == [1, 3]
    for loaded in backend.models:
        pp40, pp24, tg7 = loaded.benches
        assert (pp40.n_ctx, pp40.n_batch, pp40.n_ubatch) == (40, 16, 8)
        assert pp40.calls == [("prompt", 40)] + [("clear", 0), ("prompt", 40)] * 2
        assert pp24.calls == [("prompt", 24)] + [("clear", 0), ("prompt", 24)] * 2
        assert tg7.n_ctx == 7 and tg7.calls == [("generate", 1)] + [("clear", 0),
                                                                    ("generate", 7)] * 2
    assert all(r.seconds.shape == (2,) for r in sweep.results)
    assert dict(sweep.bandwidth) == {1: GB, 3: 3 * GB}
    tg = sweep.results[5]
    assert sweep.bytes_per_token is not None
    assert sweep.efficiency(tg) == pytest.approx(tg.mean * sweep.bytes_per_token / (3 * GB))
    assert sweep.efficiency(sweep.results[3]) is None  # pp has no roofline


def test_the_interval_is_students() -> None:
    x = np.array([1010.0, 980.0, 1043.0, 1001.0, 995.0])
    low, high = mean_interval(x)
    ref = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert (low, high) == pytest.approx(ref)
    assert all(math.isnan(v) for v in mean_interval(np.array([5.0])))


def test_a_results_interval_is_on_the_log_scale() -> None:
    """A wild repetition widens the interval but never below 0 tokens/s, where Student's t on
    the tokens/s themselves would go (as it did on a shared machine: [-219, 1513])."""
    from pytest_quantcheck.metrics.throughput import BenchResult

    tokens = 128
    samples = np.array([1500.0, 1400.0, 90.0, 1450.0, 60.0])
    r = BenchResult("tg128", 0, tokens, 2, 2048, 512, tokens / samples)
    assert mean_interval(samples)[0] < 0
    low, high = r.interval()
    ref = np.exp(scipy_stats.t.interval(0.95, 4, loc=np.log(samples).mean(),
                                        scale=scipy_stats.sem(np.log(samples))))
    assert (low, high) == pytest.approx(tuple(ref)) and 0 < low < high


def test_sweep_table(capsys: pytest.CaptureFixture[str], fake_bench: list[FakeBackend],
                     model: Path) -> None:
    out = run(capsys, "bench", model, "-t", "1,2", "-p", "40,24", "-n", "8", "-r", "3",
              "-b", "64", "-ub", "32").splitlines()
    assert out[0].startswith("machine: ") and "threads" not in out[0]  # each row says its own
    assert out[1] == ("| model | size | threads | n_batch | n_ubatch | test | t/s |"
                      " 95 % CI of t/s | vs 1 threads | roofline |")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out[3:]]
    assert [(r[2], r[5]) for r in rows] == [("1", "pp40"), ("1", "pp24"), ("1", "tg8"),
                                            ("2", "pp40"), ("2", "pp24"), ("2", "tg8")]
    assert all(r[0] == "m.gguf" and r[3:5] == ["64", "32"] for r in rows)
    for row in rows:
        mean, sd = (float(v) for v in row[6].split(" ± "))
        low, high = (float(v) for v in row[7].strip("[]").split(", "))
        assert low < mean < high and sd > 0
    assert [r[8] for r in rows[:3]] == ["1.00x"] * 3
    mean = {(r[2], r[5]): float(r[6].split(" ± ")[0]) for r in rows}
    assert rows[3][8] == f"{mean['2', 'pp40'] / mean['1', 'pp40']:.2f}x"
    assert rows[2][9].endswith("of 1.0 GB/s") and rows[5][9].endswith("of 2.0 GB/s")
    assert rows[0][9] == ""  # pp: no roofline
    assert [m.options.n_threads for m in fake_bench[0].models] == [1, 2]


def test_one_repetition_has_no_interval(capsys: pytest.CaptureFixture[str],
                                        fake_bench: list[FakeBackend], model: Path) -> None:
    out = run(capsys, "bench", model, "-p", "40,24", "-n", "0", "-r", "1").splitlines()
    assert "vs" not in out[1]  # one thread count: nothing to scale against
    assert len(out) == 5 and all("| n/a (1 repetition) |" in line for line in out[3:])


def test_sweep_json(capsys: pytest.CaptureFixture[str], fake_bench: list[FakeBackend],
                    model: Path) -> None:
    data = json.loads(run(capsys, "bench", model, "-t", "2,1", "-p", "40", "-n", "8,4", "-r",
                          "2", "--json"))
    assert data["model"] == str(model) and data["threads"] == [2, 1]
    assert "threads" not in data["machine"] and data["machine"]["llama_cpp"] == "fake 1"
    assert [(t["n_threads"], t["test"]) for t in data["tests"]] == [
        (2, "pp40"), (2, "tg8"), (2, "tg4"), (1, "pp40"), (1, "tg8"), (1, "tg4")]
    for t in data["tests"]:
        assert len(t["samples"]) == 2 and t["tokens_per_s"] == pytest.approx(np.mean(t["samples"]))
        assert t["ci95_low"] < t["tokens_per_s"] < t["ci95_high"]
        assert t["bandwidth_gb_s"] == t["n_threads"]
        assert (t["efficiency"] is None) == (t["n_gen"] == 0)
    one = json.loads(run(capsys, "bench", model, "-t", "1,2", "-n", "0", "-r", "1", "--json"))
    assert all(t["ci95_low"] is None and t["ci95_high"] is None for t in one["tests"])


def test_single_values_keep_the_old_output(capsys: pytest.CaptureFixture[str],
                                           fake_bench: list[FakeBackend], model: Path) -> None:
    out = run(capsys, "bench", model, "-t", "3", "-p", "40", "-n", "8", "-r", "2").splitlines()
    assert out[1] == "| model | size | threads | n_batch | n_ubatch | test | t/s | roofline |"
    assert [line.split("|")[6].strip() for line in out[3:]] == ["pp40", "tg8"]
    assert "3 threads" in out[0] and fake_bench[0].models[0].options.n_threads == 3
    data = json.loads(run(capsys, "bench", model, "-p", "40", "-n", "8", "-r", "2", "--json"))
    assert set(data) == {"model", "fingerprint", "tests", "bandwidth_gb_s", "bytes_per_token",
                         "efficiency"}
    assert fake_bench[1].models[0].options.n_threads is None  # llama.cpp's default


@pytest.mark.parametrize(("args", "message"), [
    (["-t", "0"], "argument -t/--threads: expected a positive number, got 0"),
    (["-t", "a,b"], "argument -t/--threads: expected a whole number, got 'a' in the list 'a,b'"),
    (["-t", "1,,2"], "argument -t/--threads: expected a whole number, got '' in the list"
                     " '1,,2'"),
    (["-t", "2,2"], "argument -t/--threads: '2,2' lists a value twice; list each once"),
    (["-p", "128,-1"], "argument -p/--n-prompt: expected 0 or more, got '-1' in the list"
                       " '128,-1'"),
    (["-n", "x"], "argument -n/--n-gen: expected 0 or more, got 'x'"),
    (["--plot", "scaling.txt"], "argument --plot: scaling.txt: name a .png, .svg or .pdf file"),
])
def test_bad_lists_are_one_line_errors(capsys: pytest.CaptureFixture[str], args: list[str],
                                       message: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "m.gguf", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert [line for line in err.splitlines() if "error" in line] == [
        f"quantcheck bench: error: {message}"]


def test_plot_draws_a_line_per_test(capsys: pytest.CaptureFixture[str],
                                    fake_bench: list[FakeBackend], model: Path,
                                    tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "scaling.svg"
    run(capsys, "bench", model, "-t", "1,2,3", "-p", "40,24", "-n", "8", "-r", "2", "--plot", out)
    svg = out.read_text()
    for text in ("pp40", "pp24", "tg8", "threads", "prompt processing", "text generation",
                 "m.gguf on "):
        assert text in svg, text
    single = tmp_path / "single.png"  # one setting: still drawn, from the classic run
    run(capsys, "bench", model, "-p", "40", "-n", "0", "-r", "2", "--plot", single)
    assert single.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_before_measuring(
        capsys: pytest.CaptureFixture[str], fake_bench: list[FakeBackend], model: Path,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an import of a missing one sees
    assert cli.main(["bench", str(model), "-t", "1,2", "--plot", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert err == ("quantcheck: error: --plot: install matplotlib for plots:"
                   " pip install 'pytest-quantcheck[plots]'\n")
    assert fake_bench == []  # nothing loaded, nothing timed


@pytest.mark.parametrize("value", [[128, 512], "128,512"])
def test_the_plugins_throughput_check_keeps_one_setting(value: object) -> None:
    """A gate compares one setting with its baseline; a sweep is the command's."""
    from pytest_quantcheck.config import ConfigError, Layer, merge

    with pytest.raises(ConfigError) as info:
        merge([Layer("pyproject.toml", Path("."), {"bench_prompt": value})])
    assert str(info.value) == f"pyproject.toml: bench_prompt: expected a whole number, got {value!r}"


@pytest.mark.parametrize("threads", ["2", "1,2"])
def test_the_command_times_with_the_machine_to_itself(
        fake_bench: list[FakeBackend], model: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, threads: str) -> None:
    """As the plugin's timings: the command holds the machine's timing lock around every
    repetition, so another process's heavy step (a suite decoding) never runs beside it."""
    import contextlib
    from collections.abc import Iterator

    held: list[bool] = []
    real_load = FakeBackend.load  # every bench context is opened on a model loaded under the lock

    @contextlib.contextmanager
    def timing() -> Iterator[None]:
        held.append(True)
        try:
            yield
        finally:
            held.append(False)

    def load(self: FakeBackend, path: Path, options: object) -> object:
        assert held and held[-1], "measured outside the timing lock"
        return real_load(self, path, options)  # type: ignore[arg-type]

    monkeypatch.setattr(machine, "timing", timing)
    monkeypatch.setattr(FakeBackend, "load", load)
    run(capsys, "bench", model, "-t", threads, "-p", 16, "-n", 4, "-r", 2)
    assert held == [True, False]


@pytest.mark.parametrize("threads", ["2", "1,2"])
def test_a_file_that_is_not_gguf_is_one_line_before_timing(
        fake_bench: list[FakeBackend], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        threads: str) -> None:
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    assert cli.main(["bench", str(bad), "-t", threads, "-p", "16", "-n", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: not a GGUF file" in err
    assert all(not b.models for b in fake_bench)  # nothing loaded, nothing timed


def test_a_sweep_checks_its_file_once(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header check reads the vocabulary (0.2 s at 262k tokens): once a sweep, not once a
    thread count."""
    from pytest_quantcheck import bench

    checked: list[Path] = []
    monkeypatch.setattr(bench, "check_gguf_path", checked.append)
    monkeypatch.setattr(machine, "memory_bandwidth", lambda threads: threads * GB)
    Bench(FakeBackend()).sweep(model, sweep_settings([1, 2, 3], [16], [4]), repetitions=1)
    assert checked == [model]
