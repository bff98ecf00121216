"""A fake backend whose quantizer honours per-tensor types, for blame and recipe tests.

Model files hold a few named matrices of real ggml types (zero bytes of the right size, so
:func:`tensor_mix.read_mix` and the file sizes see a real mix). The fake model's noise (what
:class:`fakes.FakeLoaded` adds to its logits) is the root sum of squares of each matrix's
``WEIGHT[kind] * ERROR[type]``, so a tensor's damage is known, and roughly additive in KLD (which
grows with the noise's square). The quantizer follows llama.cpp's rules that blame relies on:
``tensor_types`` overrides (first match, ``re.search``) apply only when the file type is a
quantized one; the embedding and output options apply always.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import FILE_TYPE_MIX, QuantizeOptions, RunOptions
from pytest_quantcheck.gguf_check import GGML_TYPE_SIZES
from pytest_quantcheck.gguf_file import _encode_value, _string, read_gguf
from pytest_quantcheck.tensor_mix import GGML_TYPE_NAMES, TYPE_IDS

from fakes import FakeBackend, FakeLoaded, _bigram_table, noise_of

WIDTH = 256  # every row a whole block of every type
ROWS = 4
N_LAYER = 2
# per tensor of a kind: how much its quantization error moves the logits
WEIGHT = {"token_embd": 0.3, "output": 1.2, "attn_q": 0.08, "attn_v": 0.45, "ffn_down": 0.7}
ERROR = {"F32": 0.0, "F16": 0.0, "Q8_0": 0.03, "Q6_K": 0.06, "Q5_0": 0.12, "Q5_K": 0.1,
         "Q4_K": 0.16, "Q4_0": 0.2, "Q3_K": 0.3, "Q2_K": 0.45}
# llama file type -> the type its matrices get (output kept at Q6_K by the K-mixes)
FTYPE_TYPE = {0: "F32", 1: "F16", 2: "Q4_0", 7: "Q8_0", 8: "Q5_0", 18: "Q6_K", 15: "Q4_K",
              17: "Q5_K", 12: "Q3_K", 10: "Q2_K"}


def tensor_names() -> list[str]:
    names = ["token_embd.weight", "output.weight"]
    for i in range(N_LAYER):
        names += [f"blk.{i}.{k}.weight" for k in ("attn_q", "attn_v", "ffn_down")]
    return names


def noise_of_types(types: Mapping[str, str]) -> float:
    from pytest_quantcheck.blame import kind_of

    return math.sqrt(sum((WEIGHT[kind_of(n)] * ERROR[t]) ** 2 for n, t in types.items()))


def write_typed(path: Path, types: Mapping[str, str], ftype: int = 0) -> Path:
    """A GGUF holding each named matrix (``ROWS`` x ``WIDTH``) at its type, and a norm."""
    tensors: dict[str, tuple[int, tuple[int, ...]]] = {
        n: (TYPE_IDS[t], (WIDTH, ROWS)) for n, t in types.items()}
    tensors["output_norm.weight"] = (0, (WIDTH,))
    metadata = {"general.architecture": "fake", "general.file_type": ftype,
                "fake.noise": float(noise_of_types(types)), "fake.speed": 0.0}
    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        vtype, payload = _encode_value(value)
        header += _string(key) + struct.pack("<I", vtype) + payload
    blobs, offset = [], 0
    for name, (type_id, shape) in tensors.items():
        block, size = GGML_TYPE_SIZES[type_id]
        n_bytes = math.prod(shape) // block * size
        header += _string(name) + struct.pack("<I", len(shape))
        header += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", type_id, offset)
        blob = b"\0" * (n_bytes + (-n_bytes % 32))
        blobs.append(blob)
        offset += len(blob)
    header += b"\0" * (-len(header) % 32)
    path.write_bytes(bytes(header) + b"".join(blobs))
    return path


def write_base(path: Path) -> Path:
    return write_typed(path, dict.fromkeys(tensor_names(), "F32"))


def stock_types(ftype: int) -> dict[str, str]:
    """The types a file type gives each matrix, before any option."""
    default = FTYPE_TYPE.get(ftype, "Q4_0")
    types = dict.fromkeys(tensor_names(), default)
    if ftype in (15, 17, 12):  # the K-mixes keep the output at Q6_K, as llama.cpp does
        types["output.weight"] = "Q6_K"
    return types


class MixModel(FakeLoaded):
    """One direction of noise for every file, scaled by its noise: KLD then grows smoothly with
    the noise's square, so a tensor's damage adds up as the weights say (the plain fake draws a
    new direction per noise level, whose luck would swamp small differences)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        direction = np.random.default_rng(0).normal(0, 1, self.table.shape).astype(np.float32)
        self.table = _bigram_table() + noise_of(path) * direction


class MixBackend(FakeBackend):
    def load(self, path: Path, options: RunOptions) -> MixModel:
        self.loads += 1
        self.models.append(MixModel(path))
        return self.models[-1]  # type: ignore[return-value]

    def quantize(self, source: Path, dest: Path, ftype: int, *, n_threads: int,
                 imatrix: Mapping[str, NDArray[np.float32]] | None = None,
                 options: QuantizeOptions = FILE_TYPE_MIX) -> None:
        base = {n: GGML_TYPE_NAMES[t.ggml_type]
                for n, t in read_gguf(source).tensors.items() if len(t.shape) >= 2}
        types = dict(base) if FTYPE_TYPE.get(ftype) in ("F32", "F16") else stock_types(ftype)
        quantized = FTYPE_TYPE.get(ftype) not in ("F32", "F16")
        for name in types:
            if quantized:
                for pattern, type_id in options.tensor_types:
                    if re.search(pattern, name):
                        types[name] = GGML_TYPE_NAMES[type_id]
                        break
            if name == "token_embd.weight" and options.token_embedding_type is not None:
                types[name] = GGML_TYPE_NAMES[options.token_embedding_type]
            if name == "output.weight" and options.output_tensor_type is not None:
                types[name] = GGML_TYPE_NAMES[options.output_tensor_type]
        write_typed(dest, types, ftype)
