from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.gguf_file import write_gguf
from pytest_quantcheck.imatrix import ImatrixError, load_imatrix


def test_gguf_imatrix_is_normalised_by_counts_like_llama_quantize(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    sums = np.array([[2.0, 4.0], [9.0, 3.0]], dtype=np.float32)  # two experts of width 2
    counts = np.array([[2.0], [0.0]], dtype=np.float32)
    write_gguf(path, {"imatrix.chunk_count": 4},
               {"blk.0.ffn_up.weight.in_sum2": sums, "blk.0.ffn_up.weight.counts": counts})
    got = load_imatrix(path)
    np.testing.assert_array_equal(got["blk.0.ffn_up.weight"], [1.0, 2.0, 1.0, 1.0])


def test_legacy_imatrix_is_divided_by_ncall(tmp_path: Path) -> None:
    name = b"blk.0.attn_q.weight"
    data = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 4, 3)
    data += np.array([4.0, 8.0, 12.0], dtype="<f4").tobytes() + struct.pack("<i", 10)
    path = tmp_path / "imatrix.dat"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_imatrix(path)["blk.0.attn_q.weight"], [1.0, 2.0, 3.0])


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    path.write_bytes(b"\xff\xff\xff\x7f" + b"x" * 10)
    with pytest.raises(ImatrixError, match="llama-imatrix"):
        load_imatrix(path)
