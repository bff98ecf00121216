"""Structural validation of a GGUF file before llama.cpp sees it.

llama.cpp's loader trusts many header fields; a truncated download or a hostile file can crash
the process that loads it. This reads the header only (metadata and tensor directory, never the
weights) and checks that every tensor has a known type, a plausible shape whose rows are whole
blocks of that type, an aligned offset, and bytes that lie inside the file without overlapping
another tensor. It also refuses what llama.cpp loads and then aborts the process on (found by
``fuzz/fuzz_gguf.py``): tensors of a type without a CPU dot product (integers, F64, Q8_1, Q8_K),
one-dimensional tensors (norms, biases) other than F32, and a negative or NaN norm epsilon, which
crash the first evaluation; a layer count out of range and a vocabulary with a token twice, which
llama.cpp asserts on while loading. Any problem is a :class:`GGUFError` naming the file and what
is wrong.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import Any

from pytest_quantcheck.gguf_file import GGUFContents, GGUFError, SkippedStrings, read_gguf

# re-exported: metrics/throughput.py and users name the sizes here, where they were first
from pytest_quantcheck.gguf_types import GGML_TYPE_SIZES as GGML_TYPE_SIZES

MAX_NAME = 64  # GGML_MAX_NAME, terminator included
MAX_ELEMENTS = 1 << 50
# Types ggml stores but has no CPU dot product for (Q8_1 and Q8_K only quantize activations): a
# weight of one of these loads, then the first evaluation segfaults or aborts in ggml-cpu.
NO_COMPUTE_TYPES = {9: "Q8_1", 15: "Q8_K", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64"}
GGML_F32 = 0
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
NO_VOCAB = ("no_vocab", "none")  # tokenizer models whose token list llama.cpp does not read


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
        if t.ggml_type in NO_COMPUTE_TYPES:
            raise _fail(path, f"tensor {name} has ggml type {t.ggml_type}"
                        f" ({NO_COMPUTE_TYPES[t.ggml_type]}), which llama.cpp cannot compute with")
        if len(t.shape) == 1 and t.ggml_type != GGML_F32:
            # converters and llama-quantize keep 1-D tensors F32; ggml's element-wise ops
            # (x * norm, x + bias) take no other type there
            raise _fail(path, f"tensor {name} is one-dimensional with ggml type {t.ggml_type};"
                        " llama.cpp computes with one-dimensional tensors in F32 only")
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
    _check_hyperparameters(path, contents.metadata)
    _check_vocabulary(path, contents.metadata)
    return contents


def _check_hyperparameters(path: Path, metadata: dict[str, Any]) -> None:
    # llama.cpp asserts 0 < block_count <= LLAMA_MAX_LAYERS and nextn_predict_layers <=
    # block_count while loading (llama-model.cpp, load_hparams), and eps >= 0 in every norm at
    # the first evaluation (ggml-cpu ops.cpp); a value of the wrong type it reports itself.
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return
    for key, value in metadata.items():
        if (key.startswith(f"{arch}.") and key.endswith("_epsilon") and isinstance(value, float)
                and not 0.0 <= value < math.inf):
            raise _fail(path, f"{key} is {value}, not a finite number >= 0")
    blocks = metadata.get(f"{arch}.block_count")
    if isinstance(blocks, int) and not 1 <= blocks <= MAX_LAYERS:
        raise _fail(path, f"{arch}.block_count is {blocks}, not 1 to {MAX_LAYERS}")
    nextn = metadata.get(f"{arch}.nextn_predict_layers")
    if isinstance(blocks, int) and isinstance(nextn, int) and nextn > blocks:
        raise _fail(path, f"{arch}.nextn_predict_layers is {nextn}, more than the {blocks} blocks")


def _check_vocabulary(path: Path, metadata: dict[str, Any]) -> None:
    """No token string twice: llama.cpp asserts it (llama-vocab.cpp, load). It compares tokens
    as C strings (up to the first NUL) and names an empty token ``[EMPTY_<id>]``; so do we."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, SkippedStrings) or metadata.get("tokenizer.ggml.model") in NO_VOCAB:
        return
    words = tokens.raw
    if len(set(words)) == len(words) and all(words) and b"\0" not in b"".join(words):
        return  # the common case: all distinct, none empty or holding a NUL (C loops: 262k
        # tokens take milliseconds, not the third of a second a generator takes)
    seen: dict[bytes, int] = {}
    for i, raw in enumerate(words):  # find the pair, as llama.cpp sees the strings
        word = raw.split(b"\0", 1)[0] or b"[EMPTY_%d]" % i
        first = seen.setdefault(word, i)
        if first != i:
            raise _fail(path, f"vocabulary tokens {first} and {i} are the same string"
                        f" {word[:40].decode(errors='replace')!r}")


@functools.lru_cache(maxsize=256)
def _validated(path: str, size: int, mtime_ns: int, inode: int) -> None:
    validate_gguf(Path(path))


def check_model_file(path: Path) -> None:
    """Validate once per process per file version (path, size, mtime, inode)."""
    st = path.stat()
    _validated(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
