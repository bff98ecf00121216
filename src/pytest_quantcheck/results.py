"""Per-chunk results by content, so an unchanged model is never decoded twice on the same text.

An entry holds one model's per-chunk results on one text under one protocol: the per-token NLL
of a perplexity pass, or the per-token arrays of a KL pass against one reference store. Its key
is everything the numbers depend on: the model file's SHA-256 (remembered by path, size and
modification time, see :func:`pytest_quantcheck.cache.file_sha256`), the text's, the protocol,
the reference for KL, this format's version, the inference code (llama-cpp-python's version), the
CPU features llama.cpp was built with (they change its rounding) and the GPU layers.

Chunks are independent (each decoded from an empty cache), and a run decodes them in groups of
``n_seq`` side by side; an entry always holds whole groups from the first, so a longer run extends
it with the next groups and gets the very values one long run computes. Entries are ``.npz``
files written through a temporary file and a rename, under a lock; an entry that cannot be read,
or whose recorded key differs, is computed again, never trusted.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck import cache

FORMAT_VERSION = 2  # 2: log-softmax sums of metrics/logprobs.py; KL tail bound
Arrays = dict[str, NDArray[Any]]


@dataclass(frozen=True)
class ResultKey:
    kind: str  # "nll" (a perplexity pass) or "kld" (a KL pass)
    model_sha256: str
    text_sha256: str
    protocol: Mapping[str, Any]  # ScoringProtocol.describe()
    backend: str  # the inference code's version
    system_info: str  # llama.cpp's build features: its arithmetic
    n_gpu_layers: int
    reference: str = ""  # KL: the reference store's key

    def digest(self) -> str:
        return cache.key_digest(FORMAT_VERSION, self.kind, self.model_sha256, self.text_sha256,
                                dict(self.protocol), self.backend, self.system_info,
                                self.n_gpu_layers, self.reference)


@dataclass(frozen=True)
class Cached:
    """What an entry holds: the first ``n_chunks`` chunks' arrays (first axis: chunks), the
    number of chunks the text offers under the protocol, and the evaluated tokens' digest."""

    arrays: Arrays
    n_total: int
    tokens_sha256: str

    @property
    def n_chunks(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0]) if self.arrays else 0


class ResultCache:
    """The entries under ``root/results``, and in memory for the life of this object (so a run
    with the disk cache off still extends a partial result instead of decoding it again);
    ``enabled=False`` reads and writes no file."""

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = (root or cache.cache_root()) / "results"
        self.enabled = enabled
        self._memory: dict[str, Cached] = {}

    def path(self, key: ResultKey, label: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
        return self.root / f"{key.kind}-{safe}-{key.digest()[:24]}.npz"

    def read(self, key: ResultKey, label: str) -> Cached | None:
        if key.digest() in self._memory:
            return self._memory[key.digest()]
        if not self.enabled:
            return None
        path = self.path(key, label)
        try:
            with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("key") != key.digest() or meta.get("format") != FORMAT_VERSION:
                    return None
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None  # missing or damaged: computed again
        if len({a.shape[0] for a in arrays.values()}) != 1:
            return None
        return Cached(arrays, int(meta["n_total"]), str(meta["tokens_sha256"]))

    def write(self, key: ResultKey, label: str, entry: Cached) -> None:
        self._memory[key.digest()] = entry
        if not self.enabled:
            return
        path = self.path(key, label)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache.cache_error(path.parent, "create cache directory", exc) from None
        buffer = io.BytesIO()
        meta = json.dumps({"format": FORMAT_VERSION, "key": key.digest(), "n_total": entry.n_total,
                           "tokens_sha256": entry.tokens_sha256})
        members: dict[str, Any] = {"meta": np.array(meta), **entry.arrays}
        np.savez(buffer, **members)
        try:
            cache.write_atomic(path, buffer.getvalue())
        except OSError as exc:
            raise cache.cache_error(path.parent, "write cache entry", exc) from None

    def extend(self, key: ResultKey, label: str, upto: int | None,
               compute: Callable[[int, int | None], Cached]) -> tuple[Cached, int]:
        """The entry holding at least ``upto`` chunks (None: all the text offers), extended by
        ``compute(first_chunk, upto)`` where it falls short. Returns it and the number of chunks
        decoded now (0 when every chunk came from the cache)."""
        if self.enabled:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise cache.cache_error(self.root, "create cache directory", exc) from None
        with cache.locked(self.path(key, label)) if self.enabled else contextlib.nullcontext():
            have = self.read(key, label)
            start = 0 if have is None else have.n_chunks
            if have is not None and start >= (have.n_total if upto is None else
                                              min(upto, have.n_total)):
                return have, 0
            fresh = compute(start, upto)
            if have is not None and start:
                if fresh.tokens_sha256 != have.tokens_sha256 or fresh.n_total != have.n_total:
                    have, start = None, 0  # the cached part came from other tokens: start over
                    fresh = compute(0, upto)
                else:
                    fresh = Cached({name: np.concatenate([have.arrays[name], fresh.arrays[name]])
                                    for name in fresh.arrays}, fresh.n_total, fresh.tokens_sha256)
            self.write(key, label, fresh)
            return fresh, fresh.n_chunks - start
