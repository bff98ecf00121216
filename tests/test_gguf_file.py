from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.gguf_file import GGUFError, read_gguf, write_gguf


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    a = np.arange(512, dtype=np.float32).reshape(2, 256)
    b = np.ones(7, dtype=np.float16)
    meta = {"general.architecture": "llama", "x.count": 3, "x.flag": True, "x.eps": 1e-5,
            "x.tokens": ["a", "b▁"], "x.scores": np.array([0.5, -1.0], dtype=np.float32)}
    write_gguf(path, meta, {"a.weight": a, "b.weight": b})
    got = read_gguf(path)
    assert got.metadata["x.tokens"] == ["a", "b▁"]
    assert got.metadata["x.count"] == 3 and got.metadata["x.flag"] is True
    assert got.tensors["a.weight"].shape == (256, 2)  # GGUF order: contiguous dimension first
    assert np.array_equal(got.tensor("a.weight"), a)
    assert np.array_equal(got.tensor("b.weight"), b)
    assert got.data_offset % 32 == 0


@pytest.mark.parametrize("cut", [3, 10, 30, 80])
def test_truncated_header_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, {"general.architecture": "llama", "k": "v" * 40},
               {"t": np.zeros(4, np.float32)})
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    assert str(path) in str(info.value)


def test_absurd_string_length_is_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little")
                     + (1).to_bytes(8, "little") + (2**62).to_bytes(8, "little"))
    with pytest.raises(GGUFError, match="claims"):
        read_gguf(path)
