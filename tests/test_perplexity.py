from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.evaluation import (
    EvalTextError,
    ScoringProtocol,
    perplexity,
    read_eval_text,
)
from pytest_quantcheck.metrics.perplexity import perplexity_from_nll

from fakes import FakeLoaded, write_fake_gguf


def naive_perplexity(model: FakeLoaded, text: bytes, n_ctx: int) -> tuple[float, float, int]:
    """llama-perplexity's protocol, token by token: one chunk at a time, one position at a time."""
    tokens = model.tokenize(text)
    nlls = []
    for c in range(len(tokens) // n_ctx):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx].copy()
        target_chunk = chunk.copy()
        if model.add_bos:
            chunk[0] = model.bos_token
        for pos in range(n_ctx // 2, n_ctx - 1):
            row = model.sequence_logits(chunk[: pos + 1])[-1].astype(np.float64)
            m = row.max()
            logp = row[target_chunk[pos + 1]] - m - math.log(np.exp(row - m).sum())
            nlls.append(-logp)
    mean = sum(nlls) / len(nlls)
    var = sum(x * x for x in nlls) / len(nlls) - mean * mean
    ppl = math.exp(mean)
    return ppl, ppl * math.sqrt(var / (len(nlls) - 1)), len(nlls)


@pytest.mark.parametrize("n_batch", [64, 16, 256, 512])
@pytest.mark.parametrize("add_bos", [True, False])
def test_batched_perplexity_equals_token_by_token(tmp_path: Path, text_file: Path,
                                                  n_batch: int, add_bos: bool) -> None:
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"), add_bos=add_bos)
    text = read_eval_text(text_file)
    res = perplexity(model, text, ScoringProtocol(n_ctx=64, n_batch=n_batch))
    ppl, err, count = naive_perplexity(model, text, 64)
    assert res.n_tokens == count
    # float32 arithmetic as llama.cpp does it, against a float64 loop
    assert res.ppl == pytest.approx(ppl, rel=1e-6)
    assert res.ppl_err == pytest.approx(err, rel=1e-6)
    assert res.token_nll.shape == (res.n_chunks, 31)
    np.testing.assert_allclose(res.chunk_nll, res.token_nll.mean(axis=1))


def test_bos_replacement_changes_the_numbers(tmp_path: Path, text_file: Path) -> None:
    text = read_eval_text(text_file)
    proto = ScoringProtocol(n_ctx=64, n_batch=256)
    with_bos = perplexity(FakeLoaded(write_fake_gguf(tmp_path / "a.gguf")), text, proto)
    without = perplexity(FakeLoaded(tmp_path / "a.gguf", add_bos=False), text, proto)
    assert with_bos.ppl != without.ppl


def test_chunk_cap_and_protocol_shape(tmp_path: Path, text_file: Path) -> None:
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"))
    text = read_eval_text(text_file)
    res = perplexity(model, text, ScoringProtocol(n_ctx=64, n_batch=128, n_chunks=3))
    assert res.n_chunks == 3 and res.n_tokens == 3 * 31
    proto = ScoringProtocol(n_ctx=512, n_batch=2048)
    assert (proto.n_seq, proto.first, proto.scored_per_chunk) == (4, 256, 255)


def test_perplexity_summary_matches_llama_formula() -> None:
    nll = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 4.0]])
    res = perplexity_from_nll(nll, n_ctx=8)
    flat = nll.reshape(-1)
    assert res.ppl == pytest.approx(math.exp(flat.mean()))
    assert res.ppl_err == pytest.approx(res.ppl * flat.std() / math.sqrt(flat.size - 1))


def test_memory_per_group_is_bounded(tmp_path: Path, text_file: Path) -> None:
    """Only one group of logits is alive at a time: the fake counts contexts, and results hold
    per-token NLL only (8 bytes a token), never logits."""
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"))
    res = perplexity(model, read_eval_text(text_file), ScoringProtocol(n_ctx=64, n_batch=128))
    assert model.contexts_opened == 1
    assert res.token_nll.nbytes == 8 * res.n_tokens


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"\n\n  \n", "is empty"), (b"short text", "fewer than the 128")],
)
def test_unusable_text_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"))
    with pytest.raises(EvalTextError, match=message) as info:
        perplexity(model, read_eval_text(path), ScoringProtocol(n_ctx=64), source=str(path))
    assert str(path) in str(info.value)


def test_missing_text_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(EvalTextError, match="not found"):
        read_eval_text(tmp_path / "nope.txt")


def test_one_trailing_newline_is_dropped_like_llama(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"abc\n\n")
    assert read_eval_text(path) == b"abc\n"


@pytest.mark.parametrize(("n_ctx", "n_batch"), [(3, 8), (64, 96), (64, 0)])
def test_bad_protocol_is_refused(n_ctx: int, n_batch: int) -> None:
    with pytest.raises(ValueError):
        ScoringProtocol(n_ctx=n_ctx, n_batch=n_batch)
