"""Mutations of a sound GGUF file: the fuzz run (``fuzz_gguf.py``) and the hostile-files test
(``tests/test_hostile_files.py``) both build their files here.

:func:`header_fields` maps every field of a trusted file's header (counts, string and array
lengths, value types, metadata values, tensor dimensions, types and offsets) to its byte offset,
so a mutation can aim at one field instead of hoping a random flip lands in the few kilobytes of
header before megabytes of weights. Every mutation returns the new bytes and a description of
what it changed, e.g. ``tensor output.weight dim[0] 256 -> 4294967295``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

# GGUF metadata value types and their widths (STRING = 8, ARRAY = 9 have none)
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
INT_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


@dataclass(frozen=True)
class Field:
    """One field of the header: what it is, where it lies, and whose it is."""

    kind: str  # see FIELD_KINDS
    offset: int
    width: int  # bytes
    owner: str  # the metadata key or tensor name it belongs to ("" for the file header)
    vtype: int | None = None  # for "scalar": its GGUF value type

    def read(self, data: bytes | bytearray) -> int | float | bool:
        fmt = SCALAR_FORMATS[self.vtype] if self.vtype is not None else INT_FORMATS[self.width]
        value: int | float | bool = struct.unpack_from(fmt, data, self.offset)[0]
        return value

    def label(self) -> str:
        where = f"{self.owner} " if self.owner else ""
        return f"{where}{self.kind}"


FIELD_KINDS = ("version", "n_tensors", "n_kv", "key_len", "value_type", "string_len", "scalar",
               "array_type", "array_len", "element_len", "name_len", "n_dims", "dim",
               "tensor_type", "tensor_offset")


@dataclass(frozen=True)
class Layout:
    fields: tuple[Field, ...]
    header_end: int  # end of the tensor directory; the data section starts at the next
    alignment: int  # multiple of this

    def of(self, *kinds: str) -> list[Field]:
        return [f for f in self.fields if f.kind in kinds]

    def find(self, kind: str, owner: str, index: int = 0) -> Field:
        return [f for f in self.fields if f.kind == kind and f.owner == owner][index]


def header_fields(data: bytes) -> Layout:
    """The field map of a sound GGUF v2/v3 file (the seed; never a mutated file)."""
    pos = 0
    fields: list[Field] = []

    def take(kind: str, width: int, owner: str = "", vtype: int | None = None) -> int | float:
        nonlocal pos
        field = Field(kind, pos, width, owner, vtype)
        fields.append(field)
        pos += width
        return field.read(data)

    def string(kind: str, owner: str) -> str:
        nonlocal pos
        n = int(take(kind, 8, owner))
        text = data[pos : pos + n].decode()
        pos += n
        return text

    assert data[:4] == b"GGUF", "the seed must be a GGUF file"
    pos = 4
    take("version", 4)
    n_tensors = int(take("n_tensors", 8))
    n_kv = int(take("n_kv", 8))
    alignment = 32
    for _ in range(n_kv):
        key = string("key_len", "")
        fields[-1] = Field("key_len", fields[-1].offset, 8, key)
        vtype = int(take("value_type", 4, key))
        if vtype == STRING:
            string("string_len", key)
        elif vtype == ARRAY:
            etype = int(take("array_type", 4, key))
            count = int(take("array_len", 8, key))
            for i in range(count):
                if etype == STRING:
                    string("element_len", f"{key}[{i}]")
                else:
                    pos += struct.calcsize(SCALAR_FORMATS[etype])
        else:
            value = take("scalar", struct.calcsize(SCALAR_FORMATS[vtype]), key, vtype)
            if key == "general.alignment":
                alignment = int(value)
    for _ in range(n_tensors):
        name = string("name_len", "")
        fields[-1] = Field("name_len", fields[-1].offset, 8, name)
        n_dims = int(take("n_dims", 4, name))
        for _ in range(n_dims):
            take("dim", 8, name)
        take("tensor_type", 4, name)
        take("tensor_offset", 8, name)
    return Layout(tuple(fields), pos, alignment)


def put(data: bytes | bytearray, field: Field, value: int | float) -> bytes:
    """``data`` with ``field`` set to ``value`` (integers wrap to the field's width)."""
    out = bytearray(data)
    if field.vtype is not None and field.vtype in (6, 12):
        struct.pack_into(SCALAR_FORMATS[field.vtype], out, field.offset, float(value))
    else:
        struct.pack_into(INT_FORMATS[field.width], out, field.offset,
                         int(value) % (1 << (8 * field.width)))
    return bytes(out)


def interesting_ints(rng: random.Random, original: int, width: int) -> int:
    bits = 8 * width
    choices = [0, 1, 2, 3, original - 1, original + 1, original * 2, original + 32, original - 32,
               (1 << (bits - 1)) - 1, 1 << (bits - 1), (1 << bits) - 1, 1 << 16, 1 << 24,
               (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, 1 << 63,
               rng.getrandbits(bits), rng.getrandbits(rng.randint(1, bits))]
    return rng.choice(choices) % (1 << bits)


def set_interesting(rng: random.Random, data: bytes, layout: Layout,
                    *kinds: str) -> tuple[bytes, str]:
    # the kind first, then a field of it: 1,024 vocabulary entries must not drown 21 tensor names
    field = rng.choice(layout.of(rng.choice([k for k in kinds if layout.of(k)])))
    old = field.read(data)
    if field.vtype in (6, 12):
        new: int | float = rng.choice([0.0, -0.0, -1.0, 1e-30, 1e30, 3e38, float("inf"),
                                       float("-inf"), float("nan"), -float(old)])
    else:
        new = interesting_ints(rng, int(old), field.width)
    return put(data, field, new), f"{field.label()} {old!r} -> {new!r}"


# ---- mutation kinds ---------------------------------------------------------------------------

Mutator = Callable[[random.Random, bytes, Layout], tuple[bytes, str]]


def bitflip_header(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    out = bytearray(data)
    flips = [rng.randrange(layout.header_end * 8) for _ in range(rng.randint(1, 8))]
    for bit in flips:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), f"{len(flips)} bit flips in the header at bytes {sorted(b // 8 for b in flips)}"


def bytes_anywhere(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    out = bytearray(data)
    spots = [rng.randrange(len(data)) for _ in range(rng.randint(1, 8))]
    for at in spots:
        out[at] = rng.randrange(256)
    return bytes(out), f"{len(spots)} random bytes at {sorted(spots)}"


def truncate(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    where = rng.random()
    if where < 0.5:
        cut = rng.randrange(layout.header_end + 1)
    elif where < 0.75:
        cut = rng.randrange(len(data))
    else:
        cut = len(data) - rng.randint(1, 64)  # the last tensor just short
    return data[:cut], f"cut at byte {cut} of {len(data)}"


def counts(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return set_interesting(rng, data, layout, "n_tensors", "n_kv")


def string_lengths(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return set_interesting(rng, data, layout, "key_len", "string_len", "name_len", "element_len")


def array_lengths(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return set_interesting(rng, data, layout, "array_len")


def _set_one_of(rng: random.Random, data: bytes, layout: Layout, kinds: tuple[str, ...],
               choices: list[int]) -> tuple[bytes, str]:
    """Set a random field of one of ``kinds`` to a random one of ``choices``."""
    field = rng.choice(layout.of(*kinds))
    old = field.read(data)
    new = rng.choice(choices)
    return put(data, field, new), f"{field.label()} {old} -> {new}"


def value_types(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    # not _set_one_of: the random value is drawn after the field, as the recorded runs drew it
    field = rng.choice(layout.of("value_type", "array_type"))
    old = field.read(data)
    new = rng.choice([*range(14), 255, (1 << 32) - 1, rng.getrandbits(32)])
    return put(data, field, new), f"{field.label()} {old} -> {new}"


def metadata_values(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return set_interesting(rng, data, layout, "scalar")


def n_dims(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return _set_one_of(rng, data, layout, ("n_dims",), [0, 1, 2, 3, 4, 5, 8, 1 << 16, (1 << 32) - 1])


def dims(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return set_interesting(rng, data, layout, "dim")


def tensor_types(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    return _set_one_of(rng, data, layout, ("tensor_type",), [*range(43), 99, 1 << 16, (1 << 32) - 1])


def tensor_offsets(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    offsets = layout.of("tensor_offset")
    field = rng.choice(offsets)
    old = int(field.read(data))
    other = int(rng.choice(offsets).read(data))
    a = layout.alignment
    new = rng.choice([other, old + a, old - a, old + 1, old + 2 * a, 0,
                      interesting_ints(rng, old, 8)]) % (1 << 64)
    return put(data, field, new), f"{field.label()} {old} -> {new}"


def splice(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    at = rng.randrange(layout.header_end) if rng.random() < 0.8 else rng.randrange(len(data))
    n = rng.randint(1, 256)
    how = rng.randrange(3)
    if how == 0:
        garbage = rng.randbytes(n)
        return data[:at] + garbage + data[at + n :], f"{n} garbage bytes written at {at}"
    if how == 1:
        garbage = rng.randbytes(n)
        return data[:at] + garbage + data[at:], f"{n} garbage bytes inserted at {at}"
    src = rng.randrange(layout.header_end)
    piece = data[src : src + n]
    return data[:at] + piece + data[at + len(piece) :], f"{len(piece)} header bytes from {src} copied to {at}"


def non_gguf(rng: random.Random, data: bytes, layout: Layout) -> tuple[bytes, str]:
    what = rng.randrange(9)
    if what == 0:
        return b"", "empty file"
    if what == 1:
        n = rng.randint(1, 4096)
        return rng.randbytes(n), f"{n} random bytes"
    if what == 2:
        return b"PK\x03\x04" + rng.randbytes(rng.randint(0, 512)), "a zip file"
    if what == 3:
        header = b'{"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2]}}'
        return struct.pack("<Q", len(header)) + header + b"\0" * 8, "a safetensors file"
    if what == 4:
        return b"not a model, just a text file\n" * rng.randint(1, 50), "a text file"
    if what == 5:
        return b"\x7fELF" + rng.randbytes(rng.randint(0, 512)), "an ELF binary"
    if what == 6:
        n = rng.randint(0, 64)
        return b"GGUF" + rng.randbytes(n), f"GGUF magic and {n} random bytes"
    if what == 7:
        version = rng.choice([0, 1, 4, 0x03000000, (1 << 32) - 1])
        return data[:4] + struct.pack("<I", version) + data[8:], f"GGUF version {version}"
    magic = rng.choice([b"GGUG", b"gguf", b"FUGG", b"GGML", b"GGJT"])
    return magic + data[4:], f"magic {magic!r}"


MUTATORS: dict[str, Mutator] = {
    "bitflip-header": bitflip_header,
    "bytes-anywhere": bytes_anywhere,
    "truncate": truncate,
    "counts": counts,
    "string-lengths": string_lengths,
    "array-lengths": array_lengths,
    "value-types": value_types,
    "metadata-values": metadata_values,
    "n-dims": n_dims,
    "dims": dims,
    "tensor-types": tensor_types,
    "tensor-offsets": tensor_offsets,
    "splice": splice,
    "non-gguf": non_gguf,
}


def mutate(rng: random.Random, data: bytes, layout: Layout,
           kind: str | None = None) -> tuple[str, bytes, str]:
    """One mutated file: (kind, bytes, description)."""
    kind = kind or rng.choice(list(MUTATORS))
    out, what = MUTATORS[kind](rng, data, layout)
    return kind, out, what
