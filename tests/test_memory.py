"""Memory of load plus evaluation: /proc accounting, GPU figures, the child-process probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantcheck.backends import RunOptions
from pytest_quantcheck.cli import main
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.gpu import GpuDevice, GpuReport
from pytest_quantcheck.metrics.memory import MemoryUsage, MiB, parse_status, resident

from fakes import FakeBackend, write_fake_gguf

STATUS = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\n"


def test_status_lines() -> None:
    assert parse_status(STATUS) == (70000 * 1024, 81234 * 1024)
    with pytest.raises(ValueError):
        parse_status("Name:\tpython\n")


def test_this_process_has_a_resident_set() -> None:
    rss, hwm = resident()
    assert 0 < rss <= hwm


def test_gpu_bytes_prefer_nvmls_process_figure() -> None:
    device = GpuDevice(0, "NVIDIA L4", 24 * 2**30, 5 * 2**30)
    per_process = MemoryUsage(10 * MiB, 30 * MiB, GpuReport((device,), 3 * 2**30), 1 * 2**30)
    assert per_process.peak_bytes == 20 * MiB and per_process.gpu_bytes == 3 * 2**30
    growth = MemoryUsage(10 * MiB, 30 * MiB, GpuReport((device,), None), 1 * 2**30)
    assert growth.gpu_bytes == 4 * 2**30  # device memory in use grew by 4 GiB over the load
    none = MemoryUsage(10 * MiB, 30 * MiB, GpuReport(note="NVML found no NVIDIA GPU"))
    assert none.gpu_bytes is None
    assert none.describe() == ("peak RSS 20.0 MiB, GPU memory not available (NVML found no"
                               " NVIDIA GPU)")
    assert none.to_dict()["gpu_mib"] is None


class ShapeRecorder(FakeBackend):
    """Remembers the context shape each memory measurement is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def measure_memory(self, path: Path, options: RunOptions, n_ctx: int, n_seq: int,
                       n_batch: int) -> MemoryUsage:
        self.shapes.append((n_ctx, n_seq, n_batch))
        return super().measure_memory(path, options, n_ctx, n_seq, n_batch)


@pytest.mark.parametrize(("n_ctx", "n_batch", "asked"), [
    (64, 256, (64, 1, 64)),  # llama-perplexity would decode 4 chunks side by side; scoring, one
    (64, 64, (64, 1, 64)),
    (64, 32, (64, 1, 32)),  # a batch below n_ctx: the chunk in two batches, as scoring cuts it
])
def test_engine_measures_one_chunk_as_scoring_decodes_it(
    tmp_path: Path, n_ctx: int, n_batch: int, asked: tuple[int, int, int],
) -> None:
    path = write_fake_gguf(tmp_path / "m.gguf")
    backend = ShapeRecorder()
    usage = Engine(backend).memory(path, ScoringProtocol(n_ctx=n_ctx, n_batch=n_batch))
    assert backend.shapes == [asked]
    # the fake charges the file, a KV cache of one chunk and one batch of logits
    assert usage.peak_bytes == path.stat().st_size + 2 * 64 * 8 * 4 + asked[2] * 259 * 4


@pytest.mark.real
def test_memory_command_on_the_demo_model(capsys: pytest.CaptureFixture[str],
                                          demo_model: Path) -> None:
    assert main(["memory", str(demo_model), "-c", "256", "-b", "1024", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # every weight is touched by one evaluation: the resident growth covers the tensor data
    weights = demo_model.stat().st_size / MiB
    assert weights * 0.9 < data["peak_rss_mib"] < weights + 200
    assert data["gpu_mib"] is None or data["gpu_mib"] >= 0
    assert data["gpu_note"] or data["gpu"]
