"""llama-bench's protocol: warm-up, a cleared cache per repetition, tokens/s per repetition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.cli import main
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.metrics.throughput import BenchResult, ThroughputRun, bytes_per_token

from fakes import FakeBackend, write_fake_gguf


def test_bench_follows_llama_bench(tmp_path: Path) -> None:
    model_path = write_fake_gguf(tmp_path / "m.gguf")
    backend = FakeBackend()
    results = Engine(backend).bench(model_path, n_prompt=40, n_gen=7, repetitions=3,
                                    n_batch=16, n_ubatch=8)
    assert [r.test for r in results] == ["pp40", "tg7"]
    pp, tg = backend.models[0].benches
    assert (pp.n_ctx, pp.n_batch, pp.n_ubatch) == (40, 16, 8) and tg.n_ctx == 7
    # one warm-up run, then each repetition from an empty cache
    assert pp.calls == [("prompt", 40)] + [("clear", 0), ("prompt", 40)] * 3
    assert tg.calls == [("generate", 1)] + [("clear", 0), ("generate", 7)] * 3
    assert all(r.seconds.shape == (3,) and np.all(r.seconds > 0) for r in results)


def test_statistics_are_llama_benchs() -> None:
    r = BenchResult("pp512", 512, 0, 2, 2048, 512, np.array([0.5, 0.25, 0.2]))
    samples = np.array([1024.0, 2048.0, 2560.0])
    assert np.allclose(r.samples, samples)
    assert r.mean == pytest.approx(samples.mean())
    n = 3
    llama_sd = np.sqrt((samples**2).sum() / (n - 1) - samples.mean() ** 2 * n / (n - 1))
    assert r.sd == pytest.approx(llama_sd)


@pytest.mark.real
def test_bench_command_on_the_demo_model(capsys: pytest.CaptureFixture[str],
                                         demo_model: Path) -> None:
    assert main(["bench", str(demo_model), "-p", "64", "-n", "8", "-r", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["test"] for t in data["tests"]] == ["pp64", "tg8"]
    assert all(t["tokens_per_s"] > 0 and len(t["samples"]) == 2 for t in data["tests"])
    assert data["fingerprint"]["threads"] > 0 and data["fingerprint"]["cpu_features"]
    assert data["bandwidth_gb_s"] > 0.5 and data["efficiency"] > 0
    assert data["bytes_per_token"] < demo_model.stat().st_size
    assert main(["bench", str(demo_model), "-p", "32", "-n", "0", "-r", "1"]) == 0
    assert "| pp32 |" in capsys.readouterr().out


def test_a_stored_result_reads_back() -> None:
    r = BenchResult("tg128", 0, 128, 4, 2048, 512, np.array([0.5, 0.64]))
    back = BenchResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.test == "tg128" and np.allclose(back.samples, r.samples)
    for damaged in ({**r.to_dict(), "samples": [0, 1]}, {"test": "tg128"}):
        with pytest.raises((KeyError, ValueError)):
            BenchResult.from_dict(damaged)


def test_bytes_per_token_reads_one_embedding_row() -> None:
    from pytest_quantcheck.gguf_file import TensorInfo

    q4k, f32 = 12, 0  # Q4_K: 144 bytes per 256 weights
    tensors = {"token_embd.weight": TensorInfo("token_embd.weight", (256, 1000), q4k, 0),
               "blk.0.ffn_up.weight": TensorInfo("blk.0.ffn_up.weight", (256, 512), q4k, 0),
               "output_norm.weight": TensorInfo("output_norm.weight", (256,), f32, 0)}
    with_output = {**tensors, "output.weight": TensorInfo("output.weight", (256, 1000), q4k, 0)}
    assert bytes_per_token(with_output) == 144 + 512 * 144 + 1024 + 1000 * 144
    # tied embeddings: the table is the output matrix too, read whole
    assert bytes_per_token(tensors) == 1000 * 144 + 512 * 144 + 1024


def test_efficiency_is_bytes_moved_over_bandwidth() -> None:
    from pytest_quantcheck.machine import Fingerprint

    machine = Fingerprint("cpu", (), 4, "os", "build", (), 0)
    tg = BenchResult("tg128", 0, 128, 4, 2048, 512, np.array([1.0, 1.0]))  # 128 t/s
    run = ThroughputRun({"tg": tg}, machine, bandwidth=20e9, bytes_per_token=100_000_000)
    assert run.efficiency() == pytest.approx(128 * 1e8 / 20e9)
    assert run.roofline() == "tg at 64% of the 20.0 GB/s memory bandwidth"
    assert ThroughputRun({}, machine, 20e9, 1).efficiency() is None


class FlakySpeed:
    """A model whose throughput is measured from a list of speeds, one per measurement."""

    def __init__(self, *speeds: float) -> None:
        from pytest_quantcheck.machine import Fingerprint

        self.name, self.size_bytes, self.bits_per_weight = "m", 1, 8.0
        self.speeds = list(speeds)
        self.fingerprint = Fingerprint.from_dict({"cpu": "test"})
        self.measured = 0

    def throughput(self) -> ThroughputRun:
        speed = self.speeds[min(self.measured, len(self.speeds) - 1)]
        seconds = 128 / (speed * np.array([1.0, 1.01, 0.99, 1.02, 0.98]))
        return ThroughputRun({"tg": BenchResult("tg128", 0, 128, 2, 2048, 512, seconds)},
                             self.fingerprint)


@pytest.mark.parametrize(("speeds", "verdict", "note"), [
    ((50.0, 150.0), "pass", "a first measurement failed (p = "),
    ((50.0, 50.0), "fail", "confirmed by a second measurement (the first: p = "),
    ((150.0,), "pass", None),
])
def test_a_failing_throughput_check_is_confirmed_before_it_fails(
        speeds: tuple[float, ...], verdict: str, note: str | None) -> None:
    from pytest_quantcheck import checks

    model = FlakySpeed(*speeds)

    class Confirming(checks.OwnMeasurements):
        def remeasure(self, subject: object, of: str | None) -> bool:
            model.measured += 1
            return True

    check = checks.parse("throughput_at_least", (), {"tokens_per_s": 100})
    outcome = check.evaluate(model, Confirming())
    assert outcome.verdict == verdict
    assert model.measured == (1 if len(speeds) > 1 else 0)
    if note:
        assert note in outcome.message()
    # without confirmation a failure stands, measured once
    once = FlakySpeed(*speeds)
    plain = check.evaluate(once, checks.OwnMeasurements())
    assert plain.verdict == ("fail" if speeds[0] < 100 else "pass") and once.measured == 0


def test_two_models_are_benchmarked_in_alternation(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import fakes

    order: list[float] = []
    clear = fakes.FakeBench.clear

    def logged(self: fakes.FakeBench) -> None:
        order.append(self.speed)
        clear(self)

    monkeypatch.setattr(fakes.FakeBench, "clear", logged)
    # 3x apart and sleeps of milliseconds, so a loaded machine's scheduling delays (a fraction of
    # a millisecond each) cannot reorder the two models' means
    a = write_fake_gguf(tmp_path / "a.gguf", speed=3000)
    b = write_fake_gguf(tmp_path / "b.gguf", speed=1000)
    ra, rb = Engine(FakeBackend()).bench_interleaved([a, b], n_prompt=16, n_gen=4, repetitions=3)
    assert order == [3000.0, 1000.0] * 6  # ABABAB for pp, then for tg
    assert [r.test for r in ra] == [r.test for r in rb] == ["pp16", "tg4"]
    assert all(r.seconds.size == 3 for r in (*ra, *rb))
    assert ra[0].mean > rb[0].mean  # each model keeps its own timings
