"""Machine fingerprints, the bandwidth probe, and one timing at a time across processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_quantcheck import machine
from pytest_quantcheck.machine import Fingerprint

INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 |"
        " LLAMAFILE = 1 | OPENMP = 1 |")


def fp(**changes: object) -> Fingerprint:
    base = machine.fingerprint(system_info=INFO, llama_cpp="llama-cpp-python 0.3.36", threads=4,
                               gpu=(), n_gpu_layers=0)
    return Fingerprint(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_cpu_features_are_the_enabled_ones() -> None:
    assert machine.cpu_features(INFO) == ("AVX", "AVX2", "F16C", "FMA", "LLAMAFILE", "OPENMP",
                                          "SSE3", "SSSE3")


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)"
                    " Gold 6338 CPU @ 2.00GHz\n")
    assert machine.cpu_model(info) == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert machine.cpu_model(tmp_path / "missing")  # falls back to platform, never empty


def test_round_trip_and_differences() -> None:
    here = fp()
    assert Fingerprint.from_dict(here.to_dict()) == here
    other = fp(threads=8, cpu="Other CPU")
    assert here.differences(other) == [f"cpu {here.cpu}, now Other CPU", "threads 4, now 8"]
    assert here.differences(other, ignore=("cpu",)) == ["threads 4, now 8"]
    assert fp(gpu=("NVIDIA L4",), n_gpu_layers=99).summary().endswith(
        ", 4 threads, 99 layers on NVIDIA L4, llama-cpp-python 0.3.36")


def test_a_kernel_build_tag_is_the_same_machine() -> None:
    here = fp(os="Linux 6.18.44-fc-v595 x86_64")
    assert here.differences(fp(os="Linux 6.18.44-fc-v1147 x86_64")) == []
    assert here.differences(fp(os="Linux 6.18.45-fc-v595 x86_64")) == [
        "os Linux 6.18.44-fc-v595 x86_64, now Linux 6.18.45-fc-v595 x86_64"]  # another kernel
    assert here.differing(fp(os="Linux 6.18.44-fc-v595 aarch64")) == ["os"]
    assert fp(os="Darwin 23.4.0 arm64").differing(fp(os="Darwin 23.4.0 arm64")) == []
    assert fp(os="Windows 10 AMD64").differing(fp(os="Windows 11 AMD64")) == ["os"]


def test_a_run_on_a_rebuilt_kernel_joins_the_machines_runs() -> None:
    from pytest_quantcheck.baseline import merge_record

    def entry(os: str) -> dict[str, object]:
        return {"fingerprint": fp(os=os).to_dict(), "runs": {"tg": [{"run": os}]}}

    old = {"machines": [entry("Linux 6.18.44-fc-v595 x86_64")]}
    merged = merge_record(old, {"machines": [entry("Linux 6.18.44-fc-v1147 x86_64")]})
    assert len(merged["machines"]) == 1
    only = merged["machines"][0]
    assert only["fingerprint"]["os"] == "Linux 6.18.44-fc-v1147 x86_64"  # the latest, in full
    assert [r["run"] for r in only["runs"]["tg"]] == ["Linux 6.18.44-fc-v595 x86_64",
                                                      "Linux 6.18.44-fc-v1147 x86_64"]
    other = merge_record(merged, {"machines": [entry("Linux 6.19.1 x86_64")]})
    assert len(other["machines"]) == 2


def test_a_thread_count_alone_names_the_setting_that_matches() -> None:
    from pytest_quantcheck.baseline import MeasuredElsewhere

    stored, here = fp(threads=2), fp(threads=1)
    reason = MeasuredElsewhere(stored, here, stored.differing(here)).reason("the tg baseline")
    assert reason == ("the tg baseline was measured with another thread count (threads 2 in the"
                      " baseline, 1 here); run with --quant-threads 2 as the baseline was, or"
                      " record threads 1 with --quant-update-baseline")
    here = fp(threads=1, cpu="Other CPU")
    reason = MeasuredElsewhere(stored, here, stored.differing(here)).reason("the tg baseline")
    assert reason == (f"the tg baseline was measured on another machine (cpu {stored.cpu} in the"
                      " baseline, Other CPU here; threads 2 in the baseline, 1 here); compare on"
                      " that machine, record this one with --quant-update-baseline, or list the"
                      " field in fingerprint_ignore")


def test_a_damaged_stored_fingerprint_never_matches() -> None:
    damaged = Fingerprint.from_dict({"cpu": 3, "threads": "4", "cpu_features": "AVX"})
    assert damaged.cpu == "unknown" and damaged.threads == -1 and damaged.cpu_features == (
        "unknown",)
    assert len(damaged.differences(fp())) == len(machine.FIELDS)


def test_bandwidth_probe_is_plausible() -> None:
    bandwidth = machine.memory_bandwidth(1, size_bytes=64 * 2**20, repeats=2)
    assert 5e8 < bandwidth < 1e12  # between 0.5 GB/s and 1 TB/s


HOLD = """
import sys, time
from pytest_quantcheck import machine
with machine.heavy_step():
    print("holding", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_timing_waits_for_heavy_steps_of_other_processes(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(tmp_path))
    with subprocess.Popen([sys.executable, "-c", HOLD, "1.5"], stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        with machine.timing():
            waited = time.perf_counter() - start
        assert waited > 1.0  # the child's step held the machine for 1.5 s after saying so


def test_heavy_steps_share_and_nest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(tmp_path))
    with subprocess.Popen([sys.executable, "-c", HOLD, "3"], stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        with machine.heavy_step(), machine.heavy_step():
            assert time.perf_counter() - start < 1.0  # shared with the child's step
            with pytest.raises(RuntimeError, match="cannot start inside a heavy step"), \
                    machine.timing():
                pass
        child.kill()
