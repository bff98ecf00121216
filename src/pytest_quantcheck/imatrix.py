"""Importance matrices written by ``llama-imatrix``, read into what ``llama_model_quantize`` takes.

Both formats are read: the current GGUF one (``<tensor>.in_sum2`` and ``<tensor>.counts``) and the
legacy ``.dat`` one. The values are normalised exactly as ``llama-quantize`` normalises them.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.gguf_file import GGUFError, read_gguf


class ImatrixError(QuantcheckError, ValueError):
    """An importance-matrix file that cannot be used."""


def load_imatrix(path: Path) -> dict[str, NDArray[np.float32]]:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ImatrixError(f"{path}: cannot read importance matrix ({exc.strerror})") from None
    try:
        weights = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    except (GGUFError, struct.error, ValueError, KeyError) as exc:
        raise ImatrixError(
            f"{path}: not a readable llama-imatrix file ({exc}); regenerate it with llama-imatrix"
        ) from None
    for name, values in weights.items():
        if not np.all(np.isfinite(values)):
            raise ImatrixError(f"{path}: entry {name} has non-finite values; regenerate it")
    if not weights:
        raise ImatrixError(f"{path}: holds no importance data; regenerate it with llama-imatrix")
    return weights


def check_matches(weights: Mapping[str, NDArray[np.float32]], path: Path, model: Path) -> None:
    """An importance matrix made for another model has entries for tensors ``model`` lacks, or
    of another row length; llama.cpp would quantize with it regardless, or abort."""
    tensors = read_gguf(model, decode_strings=False).tensors
    for name, values in sorted(weights.items()):
        info = tensors.get(name)
        if info is None:
            raise ImatrixError(f"{path}: made for another model: {name} is not a tensor of"
                               f" {model.name}; make one for this model with llama-imatrix")
        if values.size % info.shape[0]:
            raise ImatrixError(f"{path}: made for another model: {name} has {values.size}"
                               f" values, not a multiple of its rows' {info.shape[0]} in"
                               f" {model.name}; make one for this model with llama-imatrix")


def _load_gguf(path: Path) -> dict[str, NDArray[np.float32]]:
    contents = read_gguf(path)
    out: dict[str, NDArray[np.float32]] = {}
    for tname in contents.tensors:
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        sums = contents.tensor(tname).astype(np.float32).reshape(-1)
        counts = contents.tensor(f"{name}.counts").astype(np.float32).reshape(-1)
        per = sums.size // counts.size
        rows = sums.reshape(counts.size, per)
        safe = np.where(counts > 0, counts, 1.0)[:, None]
        out[name] = np.where(counts[:, None] > 0, rows / safe, 1.0).reshape(-1).astype(np.float32)
    return out


def _load_legacy(path: Path) -> dict[str, NDArray[np.float32]]:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1 << 20:
        raise ValueError(f"implausible entry count {n_entries}")
    out: dict[str, NDArray[np.float32]] = {}
    for _ in range(n_entries):
        (name_len,) = take("<i")
        if not 0 < name_len < 4096 or pos + name_len > len(data):
            raise ValueError("bad entry name")
        name = data[pos : pos + name_len].decode()
        pos += name_len
        ncall, nval = take("<ii")
        if not nval > 0 or pos + 4 * nval > len(data):
            raise ValueError(f"entry {name} runs past the end")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = (values / ncall).astype(np.float32) if ncall > 0 else values
    return out
