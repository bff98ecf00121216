"""GGUF validation: sound files pass, damaged or hostile ones give one clear error, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_quantcheck.gguf_check import validate_gguf
from pytest_quantcheck.gguf_file import GGUFError, read_gguf, write_gguf


def small_model(path: Path) -> Path:
    write_gguf(path, {"general.architecture": "llama", "tokenizer.ggml.tokens": ["a", "b", "c"],
                      "tokenizer.ggml.scores": np.zeros(3, np.float32)},
               {"token_embd.weight": np.ones((3, 32), np.float16),
                "output_norm.weight": np.ones(32, np.float32),
                "output.weight": np.ones((3, 32), np.float32)})
    return path


def test_a_sound_file_passes(tmp_path: Path) -> None:
    contents = validate_gguf(small_model(tmp_path / "m.gguf"))
    assert set(contents.tensors) == {"token_embd.weight", "output_norm.weight", "output.weight"}


def rewrite_tensor(path: Path, name: str, *, ggml_type: int | None = None,
                   offset: int | None = None, dim0: int | None = None) -> None:
    """Patch one field of a tensor's directory entry in place."""
    data = bytearray(path.read_bytes())
    raw = name.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
    n_dims = struct.unpack_from("<I", data, at)[0]
    if dim0 is not None:
        struct.pack_into("<Q", data, at + 4, dim0)
    at += 4 + 8 * n_dims
    if ggml_type is not None:
        struct.pack_into("<I", data, at, ggml_type)
    if offset is not None:
        struct.pack_into("<Q", data, at + 4, offset)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"ggml_type": 99}, "unknown ggml type 99"),
        ({"ggml_type": 8, "dim0": 48}, "rows of 48 are not whole blocks of 32"),  # Q8_0
        ({"offset": 4}, "not aligned to 32"),
        ({"offset": 1 << 40}, "runs past the end of the file"),
        ({"offset": 0}, "overlap"),
        ({"dim0": 0}, "implausible shape"),
    ],
)
def test_hostile_tensor_entries_are_refused(tmp_path: Path, patch: dict[str, int],
                                            message: str) -> None:
    path = small_model(tmp_path / "m.gguf")
    rewrite_tensor(path, "output.weight", **patch)
    with pytest.raises(GGUFError, match=message) as info:
        validate_gguf(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncation_anywhere_is_an_error(tmp_path: Path) -> None:
    path = small_model(tmp_path / "m.gguf")
    data = path.read_bytes()
    for cut in range(0, len(data), 7):
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError):
            validate_gguf(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_validate_or_fail_cleanly(tmp_path: Path, data: st.DataObject) -> None:
    path = small_model(tmp_path / "fuzz.gguf")
    blob = bytearray(path.read_bytes())
    header_end = read_gguf(path).data_offset
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, header_end - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path.write_bytes(bytes(blob))
    try:
        validate_gguf(path)
    except GGUFError as exc:
        assert str(path) in str(exc)
