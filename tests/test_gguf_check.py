"""GGUF validation: sound files pass, damaged or hostile ones give one clear error, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_quantcheck.gguf_check import validate_gguf
from pytest_quantcheck.gguf_file import GGUFError, read_gguf, write_gguf


def small_model(path: Path, **metadata: Any) -> Path:
    """``metadata`` adds or replaces keys; dots are spelled ``__`` (``llama__block_count``)."""
    meta = {"general.architecture": "llama", "llama.block_count": 1,
            "tokenizer.ggml.tokens": ["a", "b", "c"], "tokenizer.ggml.scores": np.zeros(3, np.float32)}
    meta.update({key.replace("__", "."): value for key, value in metadata.items()})
    write_gguf(path, meta,
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


def refused(path: Path, message: str) -> None:
    with pytest.raises(GGUFError, match=message) as info:
        validate_gguf(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# llama.cpp aborts the process on the files below instead of reporting an error (while loading,
# or at the first evaluation, after the crash-isolated load has passed); fuzz/fuzz_gguf.py found
# them in files that passed every check above.


@pytest.mark.parametrize(
    ("tensor", "ggml_type", "message"),
    [
        ("output.weight", 26, "tensor output.weight has ggml type 26 \\(I32\\), which llama.cpp"
         " cannot compute with"),  # the same size as F32: only the type changes
        ("token_embd.weight", 25, "ggml type 25 \\(I16\\)"),  # the same size as F16
        ("output.weight", 9, "ggml type 9 \\(Q8_1\\)"),  # smaller: fits where F32 was
        ("output.weight", 15, "ggml type 15 \\(Q8_K\\)"),
        ("output_norm.weight", 1, "tensor output_norm.weight is one-dimensional with ggml type 1;"
         " llama.cpp computes with one-dimensional tensors in F32 only"),
        ("output_norm.weight", 30, "one-dimensional with ggml type 30"),  # BF16
    ],
)
def test_tensor_types_llama_cpp_cannot_compute_with_are_refused(
        tmp_path: Path, tensor: str, ggml_type: int, message: str) -> None:
    path = small_model(tmp_path / "m.gguf")
    rewrite_tensor(path, tensor, ggml_type=ggml_type)
    refused(path, message)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["a", "b", "a"], "vocabulary tokens 0 and 2 are the same string 'a'"),
        (["a", "b\0x", "b\0y"], "vocabulary tokens 1 and 2 are the same string 'b'"),  # C strings
        (["", "[EMPTY_0]", "c"], r"vocabulary tokens 0 and 1 are the same string '\[EMPTY_0\]'"),
    ],
)
def test_a_vocabulary_with_a_token_twice_is_refused(tmp_path: Path, tokens: list[str],
                                                    message: str) -> None:
    refused(small_model(tmp_path / "m.gguf", tokenizer__ggml__tokens=tokens), message)


def test_distinct_tokens_and_unread_vocabularies_pass(tmp_path: Path) -> None:
    validate_gguf(small_model(tmp_path / "a.gguf", tokenizer__ggml__tokens=["", "b\0x", "c"]))
    validate_gguf(small_model(tmp_path / "b.gguf", tokenizer__ggml__tokens=["a", "a", "a"],
                              tokenizer__ggml__model="no_vocab"))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"llama__block_count": 0}, "llama.block_count is 0, not 1 to 512"),
        ({"llama__block_count": 513}, "llama.block_count is 513, not 1 to 512"),
        ({"llama__block_count": 2**32 - 1}, "llama.block_count is 4294967295, not 1 to 512"),
        ({"llama__block_count": 2, "llama__nextn_predict_layers": 3},
         "llama.nextn_predict_layers is 3, more than the 2 blocks"),
    ],
)
def test_a_layer_count_llama_cpp_asserts_on_is_refused(tmp_path: Path, metadata: dict[str, int],
                                                       message: str) -> None:
    refused(small_model(tmp_path / "m.gguf", **metadata), message)


@pytest.mark.parametrize("eps", [-0.5, float("nan"), float("-inf"), float("inf")])
def test_a_norm_epsilon_llama_cpp_asserts_on_is_refused(tmp_path: Path, eps: float) -> None:
    refused(small_model(tmp_path / "m.gguf", llama__attention__layer_norm_rms_epsilon=eps),
            f"llama.attention.layer_norm_rms_epsilon is {eps}, not a finite number >= 0")


def test_layer_counts_in_range_pass(tmp_path: Path) -> None:
    validate_gguf(small_model(tmp_path / "m.gguf", llama__block_count=512,
                              llama__nextn_predict_layers=512,
                              llama__attention__layer_norm_rms_epsilon=0.0))
