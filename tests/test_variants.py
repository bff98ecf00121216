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
