"""throughput_at_least and memory_at_most, end to end through pytest, on the fake backend.

Fake models sleep as long as a model of their ``fake.speed`` would take, so speeds are real
timings of a controlled workload; the margins below are wide enough for a busy machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RunBothWays

RunBoth = Callable[..., pytest.RunResult]


@pytest.fixture
def speed_project(qc_project: pytest.Pytester) -> pytest.Pytester:
    from fakes import write_fake_gguf

    write_fake_gguf(qc_project.path / "base.gguf", speed=2000)
    write_fake_gguf(qc_project.path / "fast.gguf", noise=0.01, speed=2000)
    write_fake_gguf(qc_project.path / "slow.gguf", noise=0.01, speed=500)
    qc_project.makepyprojecttoml(
        '[tool.quantcheck]\nmodel = "base.gguf"\nvariants = ["fast.gguf", "slow.gguf"]\n'
        'eval_text = "eval.txt"\nn_ctx = 64\nn_batch = 256\n'
        "bench_prompt = 64\nbench_gen = 16\nbench_repetitions = 5\n"
        "threads = 2\n"  # stated: the default follows the machine's cores and xdist's workers
    )
    return qc_project


def baseline_file(project: pytest.Pytester) -> Path:
    return project.path / "baselines" / "base.quantcheck.json"


def test_absolute_throughput_passes_and_fails(speed_project: pytest.Pytester,
                                              run_both_ways: RunBoth) -> None:
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(tokens_per_s=100, phase="tg")
        @pytest.mark.throughput_at_least(tokens_per_s=1000000, phase="pp")
        def test_speed(quant_model):
            pass
        """
    )
    result = run_both_ways(speed_project)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "throughput_at_least(tokens_per_s=100, phase='tg') FAIL" not in out
    result.stdout.fnmatch_lines([
        "*throughput_at_least(tokens_per_s=1000000, phase='pp') FAIL for slow: pp64 t/s * vs"
        " 1,000,000 (limit) over 5 repetitions; 90% CI * to *; tolerance >= 1e+06 t/s;"
        " one-sided t-test on 5 pp64"
        " repetitions, p = *, mode detect, alpha 0.05; measured on *, 2 threads, fake 1*",
    ])


def test_slower_variant_fails_against_another(speed_project: pytest.Pytester,
                                              run_both_ways: RunBoth) -> None:
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(pct=-20, of="base")
        def test_speed(quant_model):
            pass
        """
    )
    result = run_both_ways(speed_project)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*throughput_at_least(pct=-20, of='base', phase='tg') FAIL for slow: tg16 t/s * vs *"
        " (base), -*% over 5 repetitions; 90% CI -*% to -*%; tolerance -20%;"
        " Mann-Whitney U test (exact) on 5 + 5"
        " log tg16 t/s samples, p = *measured on *, repetitions interleaved with base's*",
    ])
    # the two variants were benchmarked together, their repetitions alternating
    assert "throughput of slow and base, interleaved" in result.stdout.str()


def test_baseline_round_trip_records_machine_and_memory(speed_project: pytest.Pytester,
                                                        run_both_ways: RunBothWays) -> None:
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(pct=-50)
        @pytest.mark.throughput_at_least(pct=-50, phase="pp")
        def test_speed(quant_model):
            pass

        @pytest.mark.memory_at_most(mb=1000)
        def test_memory(quant_model):
            pass
        """
    )
    run_both_ways(speed_project, "--quant-update-baseline").assert_outcomes(passed=4)
    data = json.loads(baseline_file(speed_project).read_text())
    machines = data["records"]["slow"]["machines"]
    assert len(machines) == 1
    assert machines[0]["fingerprint"]["threads"] == 2
    assert set(machines[0]["throughput"]) == {"pp", "tg"} == set(machines[0]["runs"])
    assert len(machines[0]["throughput"]["tg"]["samples"]) == 5
    assert machines[0]["memory"]["peak_rss_mib"] > 0
    # one run cannot tell how much separate runs drift: the comparison says so, and how to fix it
    result = run_both_ways(speed_project, "--quant-baseline", "-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*holds 1 run(s); comparing with it needs at least 3 to know how"
                                 " much separate runs drift: record more with"
                                 " --quant-update-baseline*"])
    for _ in range(3):  # each update adds one run; baseline_runs = 2 keeps the last two
        run_both_ways(speed_project, "--quant-update-baseline", "--quant-baseline-runs", "2")
    runs = json.loads(baseline_file(speed_project).read_text())["records"]["slow"]["machines"][0]["runs"]
    assert len(runs["tg"]) == len(runs["pp"]) == 2
    run_both_ways(speed_project, "--quant-update-baseline")
    result = run_both_ways(speed_project, "--quant-baseline", "-rA", "--quant-json", "r.json")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*slow*throughput_at_least(pct=-50, of='baseline',"
                                 " phase='tg')*PASS*"])
    tg = [c for c in json.loads((speed_project.path / "r.json").read_text())["checks"]
          if c["variant"] == "slow" and "phase='tg'" in c["check"]]
    assert "two-level t-test of this run against 3 baseline runs (2 df;" in tg[0]["message"]


def test_baseline_from_another_machine_is_skipped_with_the_difference(
        speed_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(pct=-50)
        def test_speed(quant_model):
            pass
        """
    )
    for _ in range(3):  # the setup: three runs, enough to compare with
        speed_project.runpytest("--quant-update-baseline").assert_outcomes(passed=2)
    path = baseline_file(speed_project)
    data = json.loads(path.read_text())
    for record in data["records"].values():
        record["machines"][0]["fingerprint"]["cpu"] = "Other CPU 9000"
    path.write_text(json.dumps(data))
    result = run_both_ways(speed_project, "--quant-baseline", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines([
        "*the tg throughput baseline of fast was measured on another machine (cpu Other"
        " CPU 9000 in the baseline, * here); compare on that machine, record this one with"
        " --quant-update-baseline, or list the field in fingerprint_ignore*",
    ])
    run_both_ways(speed_project, "--quant-baseline", "--quant-fingerprint-ignore", "cpu",
                  ).assert_outcomes(passed=2)


def test_a_second_machine_is_added_not_replaced(speed_project: pytest.Pytester,
                                                run_both_ways: RunBothWays) -> None:
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(pct=-50)
        def test_speed(quant_model):
            pass
        """
    )
    speed_project.runpytest("--quant-update-baseline").assert_outcomes(passed=2)
    path = baseline_file(speed_project)
    data = json.loads(path.read_text())
    data["records"]["slow"]["machines"][0]["fingerprint"]["cpu"] = "Other CPU 9000"
    path.write_text(json.dumps(data))
    run_both_ways(speed_project, "--quant-update-baseline").assert_outcomes(passed=2)
    machines = json.loads(path.read_text())["records"]["slow"]["machines"]
    assert [m["fingerprint"]["cpu"] != "Other CPU 9000" for m in machines] == [False, True]


def test_memory_at_most(speed_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.memory_at_most(mb=1000)
        def test_fits(quant_model):
            pass

        @pytest.mark.memory_at_most(mb=0.05)  # the fake charges ~0.07 MiB: a file, one chunk
        def test_too_small(quant_model):
            pass

        @pytest.mark.memory_at_most(mb=1000, device="gpu")
        def test_gpu(quant_model):
            pass
        """
    )
    result = run_both_ways(speed_project, "-rs")
    result.assert_outcomes(passed=2, failed=2, skipped=2)
    result.stdout.fnmatch_lines([
        "*memory_at_most(mb=0.05, device='host') FAIL for fast: peak RSS MiB * vs 0.05 (limit);"
        " tolerance <= 0.05 MiB; peak RSS * MiB, GPU memory not available (fake backend), load plus"
        " one scored chunk, on *, 2 threads, fake 1*",
        "*GPU memory of * not available: fake backend*",
    ])


def test_gpu_memory_from_nvml(speed_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    speed_project.makeconftest(
        "from pathlib import Path\nfrom fakes import FakeBackend\n"
        "from pytest_quantcheck.gpu import GpuDevice, GpuReport\n\n"
        "def pytest_quantcheck_make_backend(config):\n"
        "    gpu = GpuReport((GpuDevice(0, 'NVIDIA H100', 80 * 2**30, 3 * 2**30),), 700 * 2**20)\n"
        "    return FakeBackend(gpu=gpu)\n"
    )
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.memory_at_most(mb=512, device="gpu")
        def test_gpu(quant_model):
            pass
        """
    )
    result = run_both_ways(speed_project)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*FAIL for fast: GPU MiB 700 vs 512 (limit); tolerance <= 512"
                                 " MiB; peak RSS * MiB, GPU 700.0 MiB on NVIDIA H100*"])


@pytest.mark.parametrize(("marker", "message"), [
    ("throughput_at_least(pct=-5, tokens_per_s=3)", "takes exactly one of tokens_per_s= or pct="),
    ("throughput_at_least(pct=-5, phase='decode')", "phase must be one of pp, tg, got 'decode'"),
    ("throughput_at_least(tokens_per_s=3, of='base')", "of= goes with pct=, not with tokens_per_s="),
    ("throughput_at_least(pct=-120)", "pct must be >= -99.0, got -120"),
    ("memory_at_most(mb='lots')", "mb must be a number, got 'lots'"),
    ("memory_at_most(mb=3, device='tpu')", "device must be one of host, gpu, got 'tpu'"),
])
def test_bad_arguments_are_usage_errors(speed_project: pytest.Pytester, marker: str,
                                        message: str) -> None:
    # serial: the argument checks themselves (test_plugin_markers.py runs one such error both ways)
    speed_project.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\n"
                             "def test_x(quant_model):\n    pass\n")
    result = speed_project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_x*{message}*"])


def test_a_phase_that_is_not_run_is_a_usage_error(speed_project: pytest.Pytester) -> None:
    speed_project.makepyfile("import pytest\n\n@pytest.mark.throughput_at_least(tokens_per_s=1,"
                             " phase='pp')\ndef test_x(quant_model):\n    pass\n")
    result = speed_project.runpytest("--quant-bench-prompt", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*needs a pp test, but bench_prompt is 0; set bench_prompt"
                                 " above 0*"])


def test_tokens_per_s_points_reach_the_plot(speed_project: pytest.Pytester) -> None:
    pytest.importorskip("matplotlib")
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(tokens_per_s=1)
        def test_speed(quant_model):
            pass
        """
    )
    speed_project.runpytest("--quant-plot", "out/speed.svg", "--quant-json", "out/r.json"
                            ).assert_outcomes(passed=2)
    svg = (speed_project.path / "out" / "speed.svg").read_text()
    assert "size against generation speed" in svg and "size against prompt speed" in svg
    assert "<!-- slow -->" in svg and "<!-- fast -->" in svg


def test_assertion_helpers_for_speed_and_memory(speed_project: pytest.Pytester) -> None:
    speed_project.makepyfile(
        """
        from pytest_quantcheck.assertions import assert_memory_at_most, assert_throughput_at_least

        def test_existing(quantize, quant_reference):
            fast, slow = quantize("fast.gguf"), quantize("slow.gguf")
            assert assert_throughput_at_least(fast, pct=-20).passed   # vs the reference
            assert_throughput_at_least(slow, tokens_per_s=10, phase="pp")
            assert_memory_at_most(fast, mb=100)
            assert_throughput_at_least(slow, fast, pct=-20)
        """
    )
    result = speed_project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: throughput_at_least(pct=-20, of='fast',"
                                 " phase='tg') FAIL for slow: tg16 t/s * vs * (fast), -*%*"])


def test_xdist_workers_share_the_physical_cores(qc_project: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # -n 2 only: what is tested is the split between workers. With threads unset, each of N
    # workers evaluates on its share of the cores instead of all of them N times over; a timing
    # (and a memory measurement, recorded beside it) holds the machine alone and runs on all of
    # them, as a serial run's, so the fingerprint says every core.
    from conftest import XDIST_QUIET
    from pytest_quantcheck.backends import physical_cores

    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.memory_at_most(mb=1000)
        def test_memory(quant_model, quant_session):
            assert quant_session.settings.threads == max(1, {cores} // 2)
            assert quant_model.fingerprint().threads == {cores}
        """.replace("{cores}", str(physical_cores())))
    # the fake backend, before a PYTHONPATH already set (a worktree's sources)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent), prepend=os.pathsep)
    result = qc_project.runpytest_subprocess("-n", "2", *XDIST_QUIET)
    result.assert_outcomes(passed=2)
    share, cores = max(1, physical_cores() // 2), physical_cores()
    result.stdout.fnmatch_lines([
        f"quantcheck: *, threads {share} per worker ({cores} physical cores / 2 workers; timings"
        f" on {cores}, as a serial run), cache *"])


def test_a_serial_baseline_compares_under_xdist(speed_project: pytest.Pytester,
                                                run_both_ways: RunBothWays) -> None:
    # threads unset, as most projects leave it: recorded serially, checked both ways (under
    # -n 2 a worker's timings run on the serial thread count, so the fingerprints agree)
    text = (speed_project.path / "pyproject.toml").read_text()
    (speed_project.path / "pyproject.toml").write_text(text.replace("threads = 2\n", ""))
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(pct=-50)
        def test_speed(quant_model):
            pass
        """
    )
    for _ in range(3):
        speed_project.runpytest("--quant-update-baseline").assert_outcomes(passed=2)
    result = run_both_ways(speed_project, "--quant-baseline", "-rs")
    result.assert_outcomes(passed=2)


def test_a_baseline_of_another_thread_count_names_the_setting(
        speed_project: pytest.Pytester) -> None:
    # serial only: the message, from the fingerprints alone
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(pct=-50)
        def test_speed(quant_model):
            pass
        """
    )
    for _ in range(3):
        speed_project.runpytest("--quant-update-baseline").assert_outcomes(passed=2)
    result = speed_project.runpytest("--quant-baseline", "-rs", "--quant-threads", "1")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines([
        "*the tg throughput baseline of fast was measured with another thread count (threads 2 in"
        " the baseline, 1 here); run with --quant-threads 2 as the baseline was, or record"
        " threads 1 with --quant-update-baseline*"])


def test_throughput_confirm_measures_again_before_failing(speed_project: pytest.Pytester) -> None:
    # Serial only: what is tested is the re-measurement inside one process.
    speed_project.makepyfile(
        """
        import pytest

        @pytest.mark.throughput_at_least(tokens_per_s=1000, phase="pp")
        def test_speed(quant_model):
            pass
        """
    )
    result = speed_project.runpytest("--quant-throughput-confirm", "true", "-k", "slow")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines([
        "*throughput_at_least(tokens_per_s=1000, phase='pp') FAIL for slow:*; confirmed by a"
        " second measurement (the first: p = *)*",
    ])
    steps = result.stdout.str().split("quantcheck steps")[1].split("quantcheck summary")[0]
    assert steps.count("throughput of slow") == 2
