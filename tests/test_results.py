"""The per-chunk result cache: extended results equal one full run bit for bit, an unchanged
model and text are never decoded again, and anything changed or damaged is computed again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.backends import RunOptions
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol

from fakes import FakeBackend, word_text, write_fake_gguf

PROTO = ScoringProtocol(n_ctx=64, n_batch=256)  # 4 chunks a group


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    text = tmp_path / "eval.txt"
    text.write_text(word_text(1500) + "\n")
    return write_fake_gguf(tmp_path / "m.gguf", noise=0.3), text, tmp_path / "cache"


def test_extended_result_equals_one_full_run(setup: tuple[Path, Path, Path]) -> None:
    model, text, root = setup
    plain = Engine(FakeBackend(), RunOptions(1), root, result_cache=False).perplexity(
        model, text, PROTO)
    engine = Engine(FakeBackend(), RunOptions(1), root)
    part = engine.perplexity(model, text, PROTO, upto=6)
    assert (part.n_chunks, part.decoded) == (8, 8)  # whole groups of 4, as a full run decodes them
    assert part.n_available == plain.n_chunks
    full = engine.perplexity(model, text, PROTO)
    assert full.decoded == plain.n_chunks - 8
    assert np.array_equal(full.token_nll, plain.token_nll) and full.ppl == plain.ppl
    assert full.tokens_sha256 == plain.tokens_sha256


def test_a_later_run_decodes_nothing(setup: tuple[Path, Path, Path]) -> None:
    model, text, root = setup
    first = Engine(FakeBackend(), RunOptions(1), root).perplexity(model, text, PROTO)
    backend = FakeBackend()
    again = Engine(backend, RunOptions(1), root).perplexity(model, text, PROTO)
    assert again.decoded == 0 and backend.loads == 0  # not even loaded
    assert np.array_equal(again.token_nll, first.token_nll)


def test_kl_results_are_cached_and_exact(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, text, root = setup
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    plain = Engine(FakeBackend(), RunOptions(1), root, result_cache=False).kl_divergence(
        ref, model, text, PROTO)
    Engine(FakeBackend(), RunOptions(1), root).kl_divergence(ref, model, text, PROTO, upto=4)
    backend = FakeBackend()
    res = Engine(backend, RunOptions(1), root).kl_divergence(ref, model, text, PROTO)
    assert res.decoded == plain.n_chunks - 4
    assert np.array_equal(res.token_kld, plain.token_kld) and res.kld == plain.kld
    assert res.same_top == plain.same_top


@pytest.mark.parametrize("change", ["text", "model", "cpu", "protocol"])
def test_a_change_is_always_recomputed(setup: tuple[Path, Path, Path], change: str) -> None:
    model, text, root = setup
    Engine(FakeBackend(), RunOptions(1), root).perplexity(model, text, PROTO)
    backend, proto = FakeBackend(), PROTO
    if change == "text":
        text.write_text(word_text(1500, seed=3) + "\n")
    elif change == "model":
        write_fake_gguf(model, noise=0.31)
    elif change == "cpu":  # another llama.cpp build rounds otherwise
        backend.system_info = lambda: "CPU : AVX2 = 1 |"  # type: ignore[method-assign]
    else:
        proto = ScoringProtocol(n_ctx=64, n_batch=128)
    res = Engine(backend, RunOptions(1), root).perplexity(model, text, proto)
    assert res.decoded == res.n_chunks > 0


def test_a_damaged_entry_is_recomputed(setup: tuple[Path, Path, Path]) -> None:
    model, text, root = setup
    first = Engine(FakeBackend(), RunOptions(1), root).perplexity(model, text, PROTO)
    (entry,) = (root / "results").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:200])
    again = Engine(FakeBackend(), RunOptions(1), root).perplexity(model, text, PROTO)
    assert again.decoded == first.n_chunks and np.array_equal(again.token_nll, first.token_nll)


def test_the_cache_off_writes_nothing(setup: tuple[Path, Path, Path]) -> None:
    model, text, root = setup
    engine = Engine(FakeBackend(), RunOptions(1), root, result_cache=False)
    engine.perplexity(model, text, PROTO, upto=4)
    res = engine.perplexity(model, text, PROTO, upto=8)
    assert res.decoded == 4  # extended in memory all the same
    assert not (root / "results").exists()


def test_task_answers_are_cached(tmp_path: Path) -> None:
    from test_tasks import hellaswag_file

    path = hellaswag_file(tmp_path / "hs.txt", 12)
    model = write_fake_gguf(tmp_path / "m.gguf", noise=0.3)
    root = tmp_path / "cache"
    first = Engine(FakeBackend(), RunOptions(1), root).tasks(model, path)
    backend = FakeBackend()
    again = Engine(backend, RunOptions(1), root).tasks(model, path)
    assert backend.loads == 0  # answered from the cache
    assert np.array_equal(again.correct, first.correct) and again.accuracy == first.accuracy
    fewer = Engine(backend, RunOptions(1), root).tasks(model, path, limit=5)
    assert backend.loads == 1 and fewer.n_tasks == 5  # another selection: scored
