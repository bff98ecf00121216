"""Reading and writing the GGUF container (version 3) in plain Python and NumPy.

The writer makes the built-in demo model; the reader loads importance matrices written by
``llama-imatrix``. Neither needs llama.cpp. Reading is bounds-checked: a malformed file raises
:class:`GGUFError` naming the file and what is wrong, never an IndexError or a huge allocation.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.errors import QuantcheckError

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
_SCALAR = {
    UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
    FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d",
}  # fmt: skip
_ARRAY_DTYPE = {
    UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
    FLOAT32: "<f4", BOOL: "?", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8",
}  # fmt: skip

# ggml tensor types this module reads or writes as arrays
GGML_F32, GGML_F16 = 0, 1
_TENSOR_DTYPE: dict[int, np.dtype[Any]] = {GGML_F32: np.dtype("<f4"), GGML_F16: np.dtype("<f2")}

_MAX_STRING = 1 << 24
_MAX_COUNT = 1 << 32


class GGUFError(QuantcheckError, ValueError):
    """A GGUF file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (the contiguous dimension) first
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class GGUFContents:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_offset: int

    def tensor(self, name: str) -> NDArray[Any]:
        """A tensor of a plain float type, as an array of shape ``reversed(shape)``."""
        info = self.tensors[name]
        dtype = _TENSOR_DTYPE.get(info.ggml_type)
        if dtype is None:
            raise GGUFError(f"{self.path}: tensor {name} has ggml type {info.ggml_type}, not F32/F16")
        count = int(np.prod(info.shape, dtype=np.int64))
        start = self.data_offset + info.offset
        if start + count * dtype.itemsize > self.path.stat().st_size:
            raise GGUFError(f"{self.path}: tensor {name} runs past the end of the file")
        arr: NDArray[Any] = np.fromfile(self.path, dtype=dtype, count=count, offset=start)
        return arr.reshape(tuple(reversed(info.shape)))


@dataclass(frozen=True)
class SkippedStrings:
    """A string array read with ``decode_strings=False``: checked, counted, not decoded."""

    count: int
    offset: int  # where the first string's length field lies in the file
    raw: tuple[bytes, ...] = field(default=(), repr=False, compare=False)  # the undecoded bytes

    def __len__(self) -> int:
        return self.count


class _Reader:
    """Parses a memory map of the file: no read ever allocates more than the file holds."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path, decode_strings: bool) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)
        self.decode_strings = decode_strings

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}; the file is truncated or not a valid GGUF file")

    def read(self, n: int) -> bytes:
        end = self.pos + n
        if end > self.size:
            raise self.fail("unexpected end of file")
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def scalar(self, vtype: int) -> Any:
        fmt = _SCALAR[vtype]
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise self.fail("unexpected end of file")
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += width
        return value

    def string(self) -> str:
        n = self.scalar(UINT64)
        if n > _MAX_STRING:
            raise self.fail(f"a string claims {n} bytes")
        try:
            return self.read(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not UTF-8") from None

    def skip_strings(self, count: int) -> SkippedStrings:
        # A 128k-token vocabulary is 128k strings: walk their lengths without decoding them.
        # Their bytes are kept (sliced in the same walk) for checks such as duplicate tokens.
        buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
        start = pos
        raw: list[bytes] = []
        keep = raw.append
        for _ in range(count):
            if pos + 8 > size:
                raise self.fail("unexpected end of file")
            (n,) = unpack("<Q", buf, pos)
            if n > _MAX_STRING:
                raise self.fail(f"a string claims {n} bytes")
            pos += 8
            keep(buf[pos : pos + n])
            pos += n
        if pos > size:
            raise self.fail("unexpected end of file")
        self.pos = pos
        return SkippedStrings(count, start, tuple(raw))

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype in _SCALAR:
            return self.scalar(vtype)
        if vtype == ARRAY and depth == 0:
            etype = self.scalar(UINT32)
            count = self.scalar(UINT64)
            if count > _MAX_COUNT:
                raise self.fail(f"an array claims {count} elements")
            if etype in _ARRAY_DTYPE:
                dtype = np.dtype(_ARRAY_DTYPE[etype])
                return np.frombuffer(self.read(count * dtype.itemsize), dtype=dtype).tolist()
            if etype == STRING and not self.decode_strings:
                return self.skip_strings(count)
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown metadata value type {vtype}")


def read_gguf(path: Path, *, decode_strings: bool = True) -> GGUFContents:
    """Metadata and tensor directory of a GGUF file (tensor data is read on demand).

    ``decode_strings=False`` leaves string arrays (vocabularies, merges) undecoded, which makes
    reading a large model's header several times faster.
    """
    try:
        f = path.open("rb")
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        buf: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            return _parse(_Reader(buf, path, decode_strings))
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()


def _parse(r: _Reader) -> GGUFContents:
    path = r.path
    if r.size < 4 or r.read(4) != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (bad magic)")
    version = r.scalar(UINT32)
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3 expected)")
    n_tensors = r.scalar(UINT64)
    n_kv = r.scalar(UINT64)
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise r.fail("tensor or metadata count is implausible")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        metadata[key] = r.value(r.scalar(UINT32))
    tensors: dict[str, TensorInfo] = {}
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar(UINT32)
        if n_dims > 4:
            raise r.fail(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(r.scalar(UINT64) for _ in range(n_dims))
        if name in tensors:
            raise r.fail(f"tensor {name!r} appears twice")
        tensors[name] = TensorInfo(name, shape, r.scalar(UINT32), r.scalar(UINT64))
    align = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise r.fail(f"alignment {align!r} is not a power of two")
    data_offset = -(-r.pos // align) * align
    return GGUFContents(path, version, metadata, tensors, data_offset)


def _encode_value(value: Any) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return BOOL, struct.pack("<?", value)
    if isinstance(value, int):
        # llama.cpp reads counts and token ids as u32 and rejects i32 for them.
        if 0 <= value < 2**32:
            return UINT32, struct.pack("<I", value)
        return (INT64, struct.pack("<q", value)) if value < 0 else (UINT64, struct.pack("<Q", value))
    if isinstance(value, float):
        return FLOAT32, struct.pack("<f", value)
    if isinstance(value, str):
        raw = value.encode()
        return STRING, struct.pack("<Q", len(raw)) + raw
    if isinstance(value, np.ndarray):
        inv = {np.dtype(v): k for k, v in _ARRAY_DTYPE.items()}
        etype = inv[value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype]
        return ARRAY, struct.pack("<IQ", etype, value.size) + value.astype(
            _ARRAY_DTYPE[etype]).tobytes()
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            parts = [_encode_value(v)[1] for v in value]
            return ARRAY, struct.pack("<IQ", STRING, len(value)) + b"".join(parts)
        raise TypeError("lists must hold strings; pass numbers as a NumPy array")
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(
    path: Path,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, NDArray[Any]],
    alignment: int = DEFAULT_ALIGNMENT,
) -> None:
    """Write F32/F16 ``tensors`` (NumPy row-major arrays) and ``metadata`` as GGUF v3."""
    header = bytearray(MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(metadata)))
    for key, value in metadata.items():
        vtype, payload = _encode_value(value)
        header += _string(key) + struct.pack("<I", vtype) + payload
    blobs: list[bytes] = []
    offset = 0
    for name, arr in tensors.items():
        ggml_type = {np.dtype("float32"): GGML_F32, np.dtype("float16"): GGML_F16}[arr.dtype]
        shape = tuple(reversed(arr.shape))
        header += _string(name) + struct.pack("<I", len(shape))
        header += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", ggml_type, offset)
        blob = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        pad = -len(blob) % alignment
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad
    header += b"\0" * (-len(header) % alignment)
    with path.open("wb") as f:
        f.write(header)
        for blob in blobs:
            f.write(blob)
