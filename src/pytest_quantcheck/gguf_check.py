"""Structural validation of a GGUF file before llama.cpp sees it.

llama.cpp's loader trusts many header fields; a truncated download or a hostile file can crash
the process that loads it. This reads the header only (metadata and tensor directory, never the
weights) and checks that every tensor has a known type, a plausible shape whose rows are whole
blocks of that type, an aligned offset, and bytes that lie inside the file without overlapping
another tensor. Any problem is a :class:`GGUFError` naming the file and what is wrong.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

from pytest_quantcheck.gguf_file import GGUFContents, GGUFError, read_gguf

# ggml type -> (elements per block, bytes per block), as ggml defines them
QK_K = 256
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17), 40: (64, 36), 41: (128, 18), 42: (64, 18),
}  # fmt: skip
MAX_NAME = 64  # GGML_MAX_NAME, terminator included
MAX_ELEMENTS = 1 << 50


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    block, size = GGML_TYPE_SIZES[ggml_type]
    return math.prod(shape) // block * size


def _fail(path: Path, what: str) -> GGUFError:
    return GGUFError(f"{path}: {what}; the file is damaged or was not written by a GGUF writer,"
                     " download or convert it again")


def validate_gguf(path: Path) -> GGUFContents:
    """The file's header, after checking everything llama.cpp relies on when it loads it."""
    contents = read_gguf(path, decode_strings=False)
    size = path.stat().st_size
    data_offset = contents.data_offset
    if data_offset > size:
        raise _fail(path, "the header ends past the end of the file")
    align = int(contents.metadata.get("general.alignment", 32))
    spans = []
    for t in contents.tensors.values():
        name = t.name
        if not name or len(name.encode()) >= MAX_NAME or not name.isprintable():
            raise _fail(path, f"tensor name {name!r} is empty, too long or not printable")
        if t.ggml_type not in GGML_TYPE_SIZES:
            raise _fail(path, f"tensor {name} has unknown ggml type {t.ggml_type}")
        if not t.shape or any(d < 1 for d in t.shape) or math.prod(t.shape) > MAX_ELEMENTS:
            raise _fail(path, f"tensor {name} has implausible shape {list(t.shape)}")
        block = GGML_TYPE_SIZES[t.ggml_type][0]
        if t.shape[0] % block:
            raise _fail(path, f"tensor {name}: rows of {t.shape[0]} are not whole blocks of"
                        f" {block} for ggml type {t.ggml_type}")
        if t.offset % align:
            raise _fail(path, f"tensor {name} starts at offset {t.offset}, not aligned to {align}")
        end = t.offset + tensor_nbytes(t.shape, t.ggml_type)
        if data_offset + end > size:
            raise _fail(path, f"tensor {name} runs past the end of the file (truncated?)")
        spans.append((t.offset, end, name))
    spans.sort()
    for (_, end, name), (start, _, nxt) in itertools.pairwise(spans):
        if start < end:
            raise _fail(path, f"tensors {name} and {nxt} overlap")
    return contents


@functools.lru_cache(maxsize=256)
def _validated(path: str, size: int, mtime_ns: int, inode: int) -> None:
    validate_gguf(Path(path))


def check_model_file(path: Path) -> None:
    """Validate once per process per file version (path, size, mtime, inode)."""
    st = path.stat()
    _validated(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
