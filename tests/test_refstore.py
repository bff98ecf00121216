from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import EvalTextError, ScoringProtocol, read_eval_text
from pytest_quantcheck.metrics.kld import compare_tokens, reference_rows
from pytest_quantcheck.refstore import ReferenceStoreError, open_reference

from fakes import FakeBackend, FakeLoaded, write_fake_gguf

PROTO = ScoringProtocol(n_ctx=64, n_batch=128)


def test_reference_is_computed_once_and_reused(tmp_path: Path, text_file: Path) -> None:
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    q = write_fake_gguf(tmp_path / "q.gguf", noise=0.5)
    backend = FakeBackend()
    engine = Engine(backend)
    first = engine.kl_divergence(ref, q, text_file, PROTO, max_tokens=16)
    loads = backend.loads
    # another run (a fresh engine) with per-chunk results not cached: only the compared model
    # is loaded again, the reference's log-probabilities come from their store
    second = Engine(backend, result_cache=False).kl_divergence(ref, q, text_file, PROTO,
                                                               max_tokens=16)
    assert backend.loads == loads + 1
    assert first.kld == second.kld and first.kld.value > 0


def test_stored_rows_equal_freshly_computed_ones(tmp_path: Path, text_file: Path) -> None:
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    store = Engine(FakeBackend()).reference(ref, text_file, PROTO, 1e-4, max_tokens=8)
    model = FakeLoaded(ref)
    tokens = model.tokenize(read_eval_text(text_file))
    chunk = tokens[:64].copy()
    chunk[0] = model.bos_token
    logits = model.sequence_logits(chunk)[32:-1]
    fresh = reference_rows(logits, tokens[33:64], 1e-4, 8)
    stored = next(store.rows())
    for name in ("offsets", "ids", "logp", "tail_logp", "target_logp", "top1"):
        assert np.array_equal(getattr(stored, name), getattr(fresh, name)), name
    assert store.meta["max_tokens"] == 8 and store.meta["protocol"]["n_ctx"] == 64
    assert compare_tokens(stored, logits, tokens[33:64]).kld.max() == 0.0


def test_model_against_itself_through_the_store_is_exact(tmp_path: Path, text_file: Path) -> None:
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    res = Engine(FakeBackend()).kl_divergence(ref, ref, text_file, PROTO, max_tokens=4)
    assert (res.kld.value, res.same_top.value, res.ppl_ratio.value) == (0.0, 1.0, 1.0)


def test_damaged_entry_is_refused_and_rebuilt(tmp_path: Path, text_file: Path) -> None:
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    engine = Engine(FakeBackend())
    store = engine.reference(ref, text_file, PROTO, max_tokens=8)
    (store.path / "logp.bin").write_bytes(b"garbage")
    with pytest.raises(ReferenceStoreError, match="damaged"):
        open_reference(store.path)
    again = engine.reference(ref, text_file, PROTO, max_tokens=8)
    assert again.path == store.path and open_reference(again.path).n_chunks == store.n_chunks


def test_models_with_different_tokenization_are_refused(tmp_path: Path, text_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    other = write_fake_gguf(tmp_path / "other.gguf", noise=0.1)
    engine = Engine(FakeBackend())
    engine.reference(ref, text_file, PROTO)
    original = FakeLoaded.tokenize
    monkeypatch.setattr(FakeLoaded, "tokenize", lambda self, text: original(self, text[::-1]))
    with pytest.raises(EvalTextError, match="tokenizes"):
        engine.kl_divergence(ref, other, text_file, PROTO)


def test_a_store_built_in_looks_equals_one_built_at_once(tmp_path: Path, text_file: Path) -> None:
    """A look that needs more of the reference extends the entry held (its chunks copied, the
    rest decoded) into the very store a full build writes."""
    ref = write_fake_gguf(tmp_path / "ref.gguf")
    once = Engine(FakeBackend(), cache_dir=tmp_path / "a").reference(ref, text_file, PROTO)
    engine = Engine(FakeBackend(), cache_dir=tmp_path / "b")
    small = engine.reference(ref, text_file, PROTO, upto=3)
    assert small.n_chunks < once.n_chunks and small.decoded == small.n_chunks
    grown = engine.reference(ref, text_file, PROTO)
    assert grown.decoded == once.n_chunks - small.n_chunks and grown.meta["complete"]
    for a, b in zip(once.rows(), grown.rows(), strict=True):
        for name in ("offsets", "ids", "logp", "tail_logp", "target_logp", "top1"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert engine.reference(ref, text_file, PROTO, upto=2).decoded == 0  # served by the full one
