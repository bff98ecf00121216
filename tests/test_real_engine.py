"""The engine on the real llama.cpp backend and the built-in demo model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.backends import RunOptions, default_backend
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol, read_eval_text
from pytest_quantcheck.gguf_check import validate_gguf
from pytest_quantcheck.gguf_file import read_gguf
from pytest_quantcheck.variants import FILE_TYPES, VariantError, quantize

pytestmark = pytest.mark.real
PROTO = ScoringProtocol(n_ctx=256, n_batch=2048, n_chunks=24)


def naive_llama_cpp_python_perplexity(model: Path, text: bytes, n_ctx: int, n_chunks: int) -> float:
    """A plain llama-cpp-python loop: the high-level Llama class, one chunk at a time."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False)
    tokens = llm.tokenize(text, add_bos=True, special=False)
    nll = []
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        llm.reset()
        llm.eval([llm.token_bos(), *chunk[1:]])
        scores = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        for pos in range(n_ctx // 2, n_ctx - 1):
            row = scores[pos]
            m = row.max()
            nll.append(-(row[chunk[pos + 1]] - m - math.log(np.exp(row - m).sum())))
    return math.exp(sum(nll) / len(nll))


def test_perplexity_equals_a_plain_llama_cpp_python_loop(demo_model: Path, demo_text: Path) -> None:
    res = Engine.default().perplexity(demo_model, demo_text, PROTO)
    naive = naive_llama_cpp_python_perplexity(demo_model, read_eval_text(demo_text), 256, 24)
    assert res.ppl == pytest.approx(naive, rel=1e-4)
    assert res.n_tokens == 24 * 127


def test_batching_does_not_change_the_numbers(demo_model: Path, demo_text: Path) -> None:
    engine = Engine.default()
    wide = engine.perplexity(demo_model, demo_text, PROTO)
    narrow = engine.perplexity(demo_model, demo_text, ScoringProtocol(256, 128, n_chunks=24))
    np.testing.assert_allclose(wide.token_nll, narrow.token_nll, rtol=1e-4, atol=1e-4)


def test_chunks_decoded_one_by_one_give_the_batchs_logits_bit_for_bit(demo_model: Path,
                                                                      demo_text: Path) -> None:
    # llama-perplexity decodes n_batch / n_ctx chunks in one batch; we decode them one at a
    # time (llama.cpp's logits buffer then holds one chunk): the logits must not change a bit
    model = default_backend().load(demo_model, RunOptions())
    try:
        tokens = model.tokenize(read_eval_text(demo_text))
        chunks = tokens[: 4 * 256].reshape(4, 256).copy()
        chunks[:, 0] = model.bos_token
        batch = model.open_context(256, 4, 1024)
        together = batch.score_chunks(chunks, 128).copy()
        batch.close()
        single = model.open_context(256, 1, 256)
        alone = np.stack([single.score_chunks(chunks[i:i + 1], 128)[0].copy() for i in range(4)])
        single.close()
    finally:
        model.close()
    assert np.array_equal(together, alone)


def test_model_against_itself_is_exact(demo_model: Path, demo_text: Path) -> None:
    res = Engine.default().kl_divergence(demo_model, demo_model, demo_text, PROTO)
    assert res.kld.value == 0.0 and res.kld_max == 0.0
    assert res.same_top.value == 1.0
    # exactly, on any CPU: the paired uncertainties come from per-token differences, all 0
    assert res.ppl_ratio.value == 1.0 and res.ln_ppl_ratio.err == 0.0
    assert res.ppl_diff.value == 0.0 and res.ppl_diff.err == 0.0


def test_demo_model_shape_and_quality(demo_model: Path, demo_text: Path) -> None:
    contents = read_gguf(demo_model)
    n_vocab = len(contents.metadata["tokenizer.ggml.tokens"])
    for info in contents.tensors.values():
        if len(info.shape) == 2:  # every matrix row is whole K-quant blocks
            assert info.shape[0] % 256 == 0, info.name
    res = Engine.default().perplexity(demo_model, demo_text, ScoringProtocol(256, 2048))
    assert res.ppl < n_vocab / 8, "held-out perplexity must be far below the vocabulary size"


def test_q2_k_is_measurably_worse_than_q8_0(demo_model: Path, demo_text: Path,
                                             real_cache: Path) -> None:
    engine = Engine.default(cache_dir=real_cache)
    backend = engine.backend
    q8 = quantize(demo_model, "Q8_0", backend=backend, cache_dir=real_cache)
    q2 = quantize(demo_model, "Q2_K", backend=backend, cache_dir=real_cache)
    r8 = engine.kl_divergence(demo_model, q8.path, demo_text, PROTO)
    r2 = engine.kl_divergence(demo_model, q2.path, demo_text, PROTO)
    diff = r2.chunk_nll - r8.chunk_nll  # paired by chunk
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(len(diff)))
    assert t > 5, f"Q2_K vs Q8_0 chunk NLL t = {t:.1f}"
    assert r2.kld.value > 10 * r8.kld.value
    assert q2.size_bytes < q8.size_bytes


@pytest.mark.parametrize("name", [n for n, t in FILE_TYPES.items() if not t.needs_imatrix])
def test_every_file_type_quantizes_to_what_it_says(demo_model: Path, real_cache: Path,
                                                   name: str) -> None:
    variant = quantize(demo_model, name, backend=default_backend(), cache_dir=real_cache)
    assert read_gguf(variant.path).metadata["general.file_type"] == FILE_TYPES[name].ftype
    validate_gguf(variant.path)  # our validator knows every tensor type llama.cpp writes


def test_imatrix_types_build_with_an_importance_matrix(demo_model: Path, real_cache: Path,
                                                       tmp_path: Path) -> None:
    from pytest_quantcheck.gguf_file import write_gguf

    contents = read_gguf(demo_model)
    tensors = {}
    for info in contents.tensors.values():
        if len(info.shape) == 2 and info.name != "token_embd.weight":
            tensors[f"{info.name}.in_sum2"] = np.full((1, info.shape[0]), 4.0, np.float32)
            tensors[f"{info.name}.counts"] = np.full((1, 1), 2.0, np.float32)
    imatrix = tmp_path / "imatrix.gguf"
    write_gguf(imatrix, {"imatrix.chunk_count": 1, "imatrix.chunk_size": 256}, tensors)
    with pytest.raises(VariantError, match="importance matrix"):
        quantize(demo_model, "IQ2_XS", backend=default_backend(), cache_dir=real_cache)
    variant = quantize(demo_model, "IQ2_XS", backend=default_backend(), imatrix=imatrix,
                       cache_dir=real_cache)
    assert read_gguf(variant.path).metadata["general.file_type"] == FILE_TYPES["IQ2_XS"].ftype


def test_quantizing_a_quantized_file_says_what_it_is(demo_model: Path, real_cache: Path) -> None:
    # llama.cpp itself only fails ("code 1"), --verbose or not; the base's file type says why
    q4 = quantize(demo_model, "Q4_K_M", backend=default_backend(), cache_dir=real_cache)
    with pytest.raises(VariantError) as info:
        quantize(q4.path, "Q2_K", backend=default_backend(), cache_dir=real_cache)
    assert str(info.value) == (f"{q4.path}: is Q4_K_M, a quantized file; quantize from an F32,"
                               " F16 or BF16 GGUF (as convert_hf_to_gguf.py writes it)")


def test_a_file_llama_cpp_refuses_is_a_clear_error(tmp_path: Path) -> None:
    from pytest_quantcheck.backends import BackendError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16)
    with pytest.raises(BackendError, match="could not load"):
        default_backend().load(bad, RunOptions())


def test_run_options_reach_llama_cpp(monkeypatch: pytest.MonkeyPatch, demo_model: Path) -> None:
    """GPU offload and threads are passed through (checked on a CPU machine with a fake loader)."""
    import llama_cpp

    from pytest_quantcheck.backends import BackendError

    seen = {}

    def fake_load(path: bytes, params: object) -> None:
        seen["n_gpu_layers"] = params.n_gpu_layers  # type: ignore[attr-defined]
        return None

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", fake_load)
    with pytest.raises(BackendError, match="could not load"):
        default_backend().load(demo_model, RunOptions(n_gpu_layers=7))
    assert seen == {"n_gpu_layers": 7}


def test_llama_cpp_log_is_silent_unless_asked(capfd: pytest.CaptureFixture[str],
                                              demo_model: Path) -> None:
    backend = default_backend()
    backend.load(demo_model, RunOptions()).close()
    assert capfd.readouterr().err == ""
    backend.load(demo_model, RunOptions(verbose=True)).close()
    assert "llama_model_loader" in capfd.readouterr().err
    backend.load(demo_model, RunOptions()).close()
    assert capfd.readouterr().err == ""


def test_demo_model_build_is_deterministic(demo_model: Path, tmp_path: Path) -> None:
    from pytest_quantcheck import cache
    from pytest_quantcheck.demo.model import build_demo_model

    again = tmp_path / "again.gguf"
    build_demo_model(again, default_backend())
    assert cache.sha256_of(again) == cache.sha256_of(demo_model)


def test_ggml_type_table_is_libggmls() -> None:
    # the table tensor sizes and hashes are computed from (gguf_check.GGML_TYPE_SIZES, names in
    # tensor_mix) against the ggml that llama-cpp-python ships
    import ctypes

    import llama_cpp

    from pytest_quantcheck.gguf_check import GGML_TYPE_SIZES
    from pytest_quantcheck.tensor_mix import GGML_TYPE_NAMES

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    ggml.ggml_type_size.restype = ctypes.c_size_t
    ggml.ggml_blck_size.restype = ctypes.c_int64
    ggml.ggml_type_name.restype = ctypes.c_char_p
    for type_id, (block, size) in GGML_TYPE_SIZES.items():
        assert (ggml.ggml_blck_size(type_id), ggml.ggml_type_size(type_id)) == (block, size)
        assert ggml.ggml_type_name(type_id).decode().upper() == GGML_TYPE_NAMES[type_id]
    assert set(GGML_TYPE_NAMES) == set(GGML_TYPE_SIZES)


def test_narrow_rows_fall_back_and_make_q6_k_q8_0(tmp_path: Path, real_cache: Path) -> None:
    # rows of 64 values cannot take Q6_K's 256-value blocks: llama.cpp writes Q8_0 instead, so
    # the two file types hold the same tensors, and the notices say so
    import subprocess
    import sys

    from pytest_quantcheck.tensor_mix import fallback_notice, identical_notices, read_mix

    root = Path(__file__).resolve().parent.parent
    narrow = tmp_path / "narrow.gguf"
    subprocess.run([sys.executable, str(root / "benchmarks" / "synthetic_model.py"), str(narrow),
                    "--embd", "64", "--layers", "1", "--ff", "128", "--heads", "4"], check=True,
                   capture_output=True)
    backend = default_backend()
    mixes = {name: read_mix(quantize(narrow, name, backend=backend, cache_dir=real_cache).path,
                            real_cache) for name in ("Q6_K", "Q8_0", "Q4_K_M")}
    assert set(mixes["Q6_K"].by_type()) == {"Q8_0", "F32"}
    notice = fallback_notice("Q6_K", "Q6_K", mixes["Q6_K"])
    assert notice is not None and "are not Q6_K's 256-value blocks, because their rows (64, 128" \
        " values) are not a multiple of 256; llama.cpp fell back: " in notice
    assert "to Q8_0 (" in notice
    assert fallback_notice("Q8_0", "Q8_0", mixes["Q8_0"]) is None
    assert identical_notices({n: m.data_sha256() for n, m in mixes.items()}) == [
        "Q6_K and Q8_0 hold identical tensors (every tensor's type and bytes are equal): the"
        " same model under different names, so their numbers agree"]
    # Q4_K falls back to Q5_0 (and its Q6_K tensors to Q8_0), so Q4_K_M differs from both
    assert "Q5_0" in mixes["Q4_K_M"].by_type()


def test_a_recipe_writes_the_types_it_asks_for(demo_model: Path, real_cache: Path) -> None:
    from pytest_quantcheck.config import Recipe
    from pytest_quantcheck.tensor_mix import read_mix
    from pytest_quantcheck.variants import recipe_options

    recipe = Recipe("Q4_K_M-q8embed", "Q4_K_M", token_embedding_type="Q8_0",
                    output_tensor_type="Q8_0", tensor_types=(("ffn_down", "Q5_K"),))
    built = quantize(demo_model, "Q4_K_M", backend=default_backend(), cache_dir=real_cache,
                     options=recipe_options(recipe, demo_model), name=recipe.name)
    plain = quantize(demo_model, "Q4_K_M", backend=default_backend(), cache_dir=real_cache)
    assert built.name == "Q4_K_M-q8embed" and built.path != plain.path
    types = {t.name: t.type_name for t in read_mix(built.path, real_cache).tensors}
    plain_types = {t.name: t.type_name for t in read_mix(plain.path, real_cache).tensors}
    assert types["token_embd.weight"] == "Q8_0" != plain_types["token_embd.weight"]
    assert all(types[n] == "Q5_K" for n in types if "ffn_down" in n)
    assert types["blk.0.attn_q.weight"] == plain_types["blk.0.attn_q.weight"]  # the rest as the mix
    pure = quantize(demo_model, "Q4_K_M", backend=default_backend(), cache_dir=real_cache,
                    options=recipe_options(Recipe("pure", "Q4_K_M", pure=True), demo_model),
                    name="pure")
    assert {t.type_name for t in read_mix(pure.path, real_cache).tensors} <= {"Q4_K", "F32"}
