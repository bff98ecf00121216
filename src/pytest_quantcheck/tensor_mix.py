"""What llama.cpp actually wrote: a GGUF file's tensor types, their bytes, and a hash per tensor.

A file type names a mix, not one type: ``Q4_K_M`` keeps some tensors at Q6_K, and a tensor whose
rows do not fill whole blocks of the type asked for falls back to another type (llama.cpp's
``tensor_type_fallback``: a 256-value k-quant block becomes Q4_0, Q5_0, Q5_1 or Q8_0 for rows of
a multiple of 32, F16 otherwise). So two file types can write the same tensors (Q6_K and Q8_0 on
a model of 64-wide rows), and a new llama.cpp build can change what one writes. This module reads
the mix and hashes every tensor's bytes, without llama.cpp; the hashes of a file are kept in the
cache by the file's content, so a large file is read once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_quantcheck import cache
from pytest_quantcheck.gguf_check import tensor_nbytes, validate_gguf
from pytest_quantcheck.gguf_file import GGUFError

# the type tables re-exported: they were first defined here, and tests and users name them here
from pytest_quantcheck.gguf_types import GGML_TYPE_NAMES as GGML_TYPE_NAMES
from pytest_quantcheck.gguf_types import GGML_TYPE_SIZES
from pytest_quantcheck.gguf_types import TYPE_IDS as TYPE_IDS
from pytest_quantcheck.gguf_types import file_type_name as file_type_name

FORMAT_VERSION = 1
_READ = 1 << 22  # bytes hashed at a time


@dataclass(frozen=True)
class Tensor:
    name: str
    type_name: str
    shape: tuple[int, ...]  # ne0 (a row's length) first
    n_bytes: int
    sha256: str

    @property
    def quantized(self) -> bool:
        """Of a block-quantized type (not F32, F16, BF16 or an integer type)."""
        return GGML_TYPE_SIZES[TYPE_IDS[self.type_name]][0] > 1


@dataclass(frozen=True)
class TensorMix:
    """A file's tensors in file order, and its ``general.file_type`` (None: not recorded)."""

    tensors: tuple[Tensor, ...]
    file_type: int | None

    def by_type(self) -> dict[str, dict[str, int]]:
        """Per ggml type: how many tensors, and their bytes."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            row = out.setdefault(t.type_name, {"tensors": 0, "bytes": 0})
            row["tensors"] += 1
            row["bytes"] += t.n_bytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))

    def hashes(self) -> dict[str, list[str]]:
        """Per tensor: its type and the SHA-256 of its bytes (what baselines keep)."""
        return {t.name: [t.type_name, t.sha256] for t in self.tensors}

    def data_sha256(self) -> str:
        """One digest of every tensor's name, type and bytes: equal for two files that hold the
        same weights, whatever their metadata says."""
        h = hashlib.sha256()
        for t in sorted(self.tensors, key=lambda t: t.name):
            h.update(f"{t.name}\0{t.type_name}\0{t.sha256}\n".encode())
        return h.hexdigest()

    def fallbacks(self, chosen: Callable[[str], bool] = lambda _name: False) -> list[Tensor]:
        """Quantized tensors whose rows are not whole blocks of the type the file type is built
        on, so llama.cpp could not give them that type (e.g. rows of 64 values under Q6_K).
        A tensor kept at F16 because even 32-value blocks do not fit its rows is not counted:
        F16 is also what an unquantized file holds, so the file alone cannot tell. ``chosen``:
        tensors whose type a recipe set on purpose, never fallbacks."""
        block = file_type_block(self.file_type)
        if block is None:
            return []
        return [t for t in self.tensors
                if t.quantized and t.shape[0] % block != 0 and not chosen(t.name)]


# llama_ftype -> the block size of the type its mix is built on (llama.h's enum; unquantized
# and unknown file types: none, so nothing is called a fallback)
_FTYPE_BLOCKS: dict[int, int] = {
    2: 32, 3: 32, 7: 32, 8: 32, 9: 32, 25: 32, 38: 32, 39: 64, 40: 128, 41: 64,
    **{f: 256 for f in (*range(10, 25), *range(26, 32), 36, 37)},
}


def file_type_block(ftype: int | None) -> int | None:
    if ftype is None:
        return None
    return _FTYPE_BLOCKS.get(ftype & ~1024)  # 1024: LLAMA_FTYPE_GUESSED


def read_mix(path: Path, cache_root: Path | None = None) -> TensorMix:
    """The file's tensor mix, its hashes from the cache when this file's content was read
    before."""
    root = cache_root or cache.cache_root()
    file_sha = cache.file_sha256(path, root=root)
    entry = root / "tensors" / f"{file_sha[:32]}.json"
    try:
        data = json.loads(entry.read_text())
        if data.get("format") == FORMAT_VERSION and data.get("file_sha256") == file_sha:
            return TensorMix(tuple(Tensor(t["name"], t["type"], tuple(t["shape"]), t["bytes"],
                                          t["sha256"]) for t in data["tensors"]),
                             data["file_type"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged: read again
    mix = _read(path)
    document = {"format": FORMAT_VERSION, "file_sha256": file_sha, "file_type": mix.file_type,
                "tensors": [{"name": t.name, "type": t.type_name, "shape": list(t.shape),
                             "bytes": t.n_bytes, "sha256": t.sha256} for t in mix.tensors]}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        cache.write_atomic(entry, json.dumps(document).encode())
    except OSError as exc:
        raise cache.cache_error(entry.parent, "write cache entry", exc) from None
    return mix


def _read(path: Path) -> TensorMix:
    contents = validate_gguf(path)  # every tensor's type known and its bytes inside the file
    tensors = []
    with path.open("rb") as f:
        for info in contents.tensors.values():
            n_bytes = tensor_nbytes(info.shape, info.ggml_type)
            f.seek(contents.data_offset + info.offset)
            h, left = hashlib.sha256(), n_bytes
            while left:
                piece = f.read(min(_READ, left))
                if not piece:  # shortened while being read
                    raise GGUFError(f"{path}: ends inside tensor {info.name}; the file is"
                                    " truncated, build or copy it again")
                h.update(piece)
                left -= len(piece)
            tensors.append(Tensor(info.name, GGML_TYPE_NAMES[info.ggml_type], info.shape,
                                  n_bytes, h.hexdigest()))
    ftype = contents.metadata.get("general.file_type")
    return TensorMix(tuple(tensors), int(ftype) if isinstance(ftype, int) else None)


# ---- what to tell the user -------------------------------------------------------------------


def fallback_notice(name: str, asked: str | None, mix: TensorMix,
                    chosen: Callable[[str], bool] = lambda _name: False) -> str | None:
    """One line naming the tensors of variant ``name`` that fell back from the file type's
    block type, the types they got, and why; None when there are none. ``asked``: the file
    type the variant was built as (None: as the file records it); ``chosen``: tensors a recipe
    typed on purpose."""
    fell = mix.fallbacks(chosen)
    if not fell:
        return None
    asked = asked or file_type_name(mix.file_type)
    block = file_type_block(mix.file_type)
    quantized = [t for t in mix.tensors if t.quantized]
    got: dict[str, list[str]] = {}
    for t in fell:
        got.setdefault(t.type_name, []).append(t.name)
    parts = [f"{len(names)} to {type_name} ({_names(names)})" for type_name, names in got.items()]
    widths = sorted({t.shape[0] for t in fell})
    return (f"{name}: {len(fell)} of {len(quantized)} quantized tensors are not"
            f" {asked or 'the file type'}'s {block}-value blocks, because their rows"
            f" ({', '.join(map(str, widths))} values) are not a multiple of {block}; llama.cpp"
            f" fell back: {'; '.join(parts)}")


def identical_notices(mixes: Mapping[str, str]) -> list[str]:
    """For variants (name to :meth:`TensorMix.data_sha256`) holding the same tensors: one line
    a group."""
    groups: dict[str, list[str]] = {}
    for name, digest in mixes.items():
        groups.setdefault(digest, []).append(name)
    return [f"{_and(sorted(names))} hold identical tensors (every tensor's type and"
            " bytes are equal): the same model under different names, so their numbers agree"
            for names in groups.values() if len(names) > 1]


def changed_tensors(now: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
    """Tensors whose type or bytes differ from ``stored`` (both :meth:`TensorMix.hashes`), or
    that one side lacks, each described in a few words."""
    out = []
    for name in sorted(set(now) | set(stored)):
        mine, theirs = now.get(name), stored.get(name)
        if theirs is None:
            out.append(f"{name} (new)")
        elif mine is None:
            out.append(f"{name} (gone)")
        elif list(mine) != list(theirs):
            out.append(f"{name} ({theirs[0]} -> {mine[0]})" if mine[0] != theirs[0]
                       else f"{name} ({mine[0]}, other bytes)")
    return out


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
