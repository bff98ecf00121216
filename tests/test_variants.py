from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantcheck.gguf_file import read_gguf
from pytest_quantcheck.variants import FILE_TYPES, VariantError, file_type, from_path, quantize

from fakes import FakeBackend, write_fake_gguf


def test_unknown_type_lists_the_valid_ones() -> None:
    with pytest.raises(VariantError) as info:
        file_type("Q4_K_X")
    assert "Q4_K_X" in str(info.value)
    for name in ("Q8_0", "Q4_K_M", "IQ4_XS", "Q2_K"):
        assert name in str(info.value)


def test_type_names_are_case_insensitive() -> None:
    assert file_type("q4_k_m") is FILE_TYPES["Q4_K_M"]
    assert FILE_TYPES["Q4_K_M"].ftype == 15


def test_quantize_is_cached_by_content(tmp_path: Path) -> None:
    base = write_fake_gguf(tmp_path / "base.gguf")
    backend = FakeBackend(log=tmp_path / "calls.log")
    a = quantize(base, "Q4_K_M", backend=backend)
    b = quantize(base, "q4_k_m", backend=backend)
    assert a.path == b.path and read_gguf(a.path).metadata["general.file_type"] == 15
    assert (tmp_path / "calls.log").read_text().splitlines() == ["quantize 15"]
    meta = json.loads(a.path.with_name(a.path.name + ".json").read_text())
    assert meta["type"] == "Q4_K_M" and meta["size"] == a.size_bytes


def test_cache_key_covers_base_content_type_and_llama_version(tmp_path: Path) -> None:
    base = write_fake_gguf(tmp_path / "base.gguf")
    paths = {
        quantize(base, "Q8_0", backend=FakeBackend()).path,
        quantize(base, "Q4_0", backend=FakeBackend()).path,
        quantize(base, "Q8_0", backend=FakeBackend(version="fake 2")).path,
    }
    write_fake_gguf(base, noise=0.5)
    paths.add(quantize(base, "Q8_0", backend=FakeBackend()).path)
    assert len(paths) == 4


def test_corrupted_entry_is_rebuilt(tmp_path: Path) -> None:
    base = write_fake_gguf(tmp_path / "base.gguf")
    log = tmp_path / "calls.log"
    v = quantize(base, "Q8_0", backend=FakeBackend(log=log))
    with v.path.open("r+b") as f:
        f.seek(6)
        f.write(b"\xff")
    quantize(base, "Q8_0", backend=FakeBackend(log=log))
    assert log.read_text().splitlines() == ["quantize 7", "quantize 7"]
    assert read_gguf(v.path).metadata["general.file_type"] == 7


def test_imatrix_types_refuse_to_start_without_one(tmp_path: Path) -> None:
    base = write_fake_gguf(tmp_path / "base.gguf")
    with pytest.raises(VariantError, match="importance matrix"):
        quantize(base, "IQ2_XS", backend=FakeBackend())


@pytest.mark.parametrize(("content", "message"), [(None, "not found"), (b"PK\x03\x04", "not a GGUF")])
def test_bad_model_path_is_a_clear_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VariantError, match=message) as info:
        from_path(path)
    assert str(path) in str(info.value)


def quantized_tensor_gguf(path: Path) -> Path:
    """A GGUF whose matrix is relabelled from F32 to Q8_0 (its bytes hold the 3 rows' 3 x 34),
    with no general.file_type: the tensors' own types must be read."""
    import numpy as np

    from pytest_quantcheck.gguf_file import write_gguf

    write_gguf(path, {"general.architecture": "llama"},
               {"output.weight": np.ones((3, 32), np.float32),
                "output_norm.weight": np.ones(32, np.float32)})
    data = bytearray(path.read_bytes())
    at = data.index(b"output.weight") + len(b"output.weight") + 4 + 16  # n_dims, 2 dims
    data[at:at + 4] = (8).to_bytes(4, "little")  # GGML_TYPE_Q8_0
    path.write_bytes(bytes(data))
    return path


def test_a_quantized_base_is_refused_before_llama_cpp_sees_it(tmp_path: Path) -> None:
    backend = FakeBackend(log=tmp_path / "calls.log")
    q4 = write_fake_gguf(tmp_path / "q4.gguf", noise=0.3, ftype=15)  # general.file_type Q4_K_M
    with pytest.raises(VariantError) as info:
        quantize(q4, "Q2_K", backend=backend)
    assert str(info.value) == (f"{q4}: is Q4_K_M, a quantized file; quantize from an F32, F16 or"
                               " BF16 GGUF (as convert_hf_to_gguf.py writes it)")
    tensors = quantized_tensor_gguf(tmp_path / "q8.gguf")
    with pytest.raises(VariantError, match=r"q8.gguf: holds quantized tensors \(Q8_0\); quantize"
                                           " from an F32, F16 or BF16 GGUF"):
        quantize(tensors, "Q4_K_M", backend=backend)
    assert not (tmp_path / "calls.log").exists()  # nothing was asked of the backend
    for ftype in (0, 1, 32):  # F32, F16 and BF16 bases are what quantizing starts from
        base = write_fake_gguf(tmp_path / f"base{ftype}.gguf", ftype=ftype)
        assert quantize(base, "Q8_0", backend=backend).file_type == "Q8_0"


def test_a_check_names_a_variant_the_base_the_baseline_a_file_type_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_quantcheck.config import Settings
    from pytest_quantcheck.variants import built_for_comparison

    monkeypatch.chdir(tmp_path)
    write_fake_gguf(tmp_path / "other.gguf")
    settings = Settings(variants=("Q8_0", "Q4_K_M"), reference="F16")
    for name in ("Q8_0", "q4_k_m", "base", "baseline", "F16", "other.gguf"):
        assert not built_for_comparison(name, settings), name
    assert built_for_comparison("Q5_K_M", settings)  # a file type of no variant: built ad hoc
    with pytest.raises(VariantError) as info:
        built_for_comparison("Q8_O", settings)
    assert str(info.value) == ("of='Q8_O' names no model: not a variant (Q8_0, Q4_K_M), 'base',"
                               " 'baseline', a file type nor an existing .gguf file; did you mean"
                               " 'Q8_0'?")
    with pytest.raises(VariantError, match=r"of='gone.gguf': .*gone.gguf is not a file; fix the"):
        built_for_comparison("gone.gguf", settings)
