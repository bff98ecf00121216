"""NVML telemetry with a fake pynvml: every path answers, none raises."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from pytest_quantcheck import gpu


class FakeNVMLError(Exception):
    pass


@dataclass
class Memory:
    total: int
    used: int


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int | None


def fake_nvml(devices: list[tuple[object, int, int, list[Proc]]], *, init_error: bool = False,
              query_error: bool = False) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    state = {"init": 0, "shutdown": 0}

    def init() -> None:
        if init_error:
            raise FakeNVMLError("Driver Not Loaded")
        state["init"] += 1

    def count() -> int:
        if query_error:
            raise FakeNVMLError("Unknown Error")
        return len(devices)

    nv.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nv.nvmlInit = init  # type: ignore[attr-defined]
    nv.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)  # type: ignore[attr-defined]
    nv.nvmlDeviceGetCount = count  # type: ignore[attr-defined]
    nv.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nv.nvmlDeviceGetName = lambda h: devices[h][0]  # type: ignore[attr-defined]
    nv.nvmlDeviceGetMemoryInfo = lambda h: Memory(devices[h][1], devices[h][2])  # type: ignore[attr-defined]
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: devices[h][3]  # type: ignore[attr-defined]
    nv.state = state  # type: ignore[attr-defined]
    return nv


def test_devices_memory_and_the_process_share() -> None:
    nv = fake_nvml([(b"NVIDIA H100 80GB HBM3", 80 * 2**30, 5 * 2**30, [Proc(42, 3 * 2**30),
                                                                        Proc(7, 2**30)]),
                    ("NVIDIA L4", 24 * 2**30, 2**30, [Proc(42, 2**29)])])
    report = gpu.query(pid=42, nvml=nv)
    assert report.available and report.names == ("NVIDIA H100 80GB HBM3", "NVIDIA L4")
    assert report.process_bytes == 3 * 2**30 + 2**29
    assert report.used_bytes() == 6 * 2**30
    assert "NVIDIA L4 (1,024 of 24,576 MiB used)" in report.describe()
    assert nv.state == {"init": 1, "shutdown": 1}  # type: ignore[attr-defined]


def test_a_process_nvml_cannot_see_has_no_share() -> None:
    nv = fake_nvml([("NVIDIA A10", 24 * 2**30, 2**30, [Proc(42, None)])])
    assert gpu.query(pid=42, nvml=nv).process_bytes is None
    assert gpu.query(nvml=nv).process_bytes is None


@pytest.mark.parametrize(("nv", "note"), [
    (fake_nvml([], init_error=True), "NVML could not start: Driver Not Loaded"),
    (fake_nvml([]), "NVML found no NVIDIA GPU"),
    (fake_nvml([], query_error=True), "NVML query failed: Unknown Error"),
])
def test_no_gpu_is_a_note_never_an_exception(nv: types.ModuleType, note: str) -> None:
    report = gpu.query(pid=1, nvml=nv)
    assert not report.available and report.note == note
    assert report.describe() == f"GPU not available ({note})"


def test_without_nvidia_ml_py(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    report = gpu.query()
    assert not report.available and "nvidia-ml-py is not installed" in report.note


def test_the_real_module_on_this_machine_answers() -> None:
    report = gpu.query(pid=1)  # a GPU machine lists devices; any other says why not
    assert report.available or report.note
