"""Reference log-probabilities on disk, so each variant is compared without re-running the reference.

An entry is a directory:

``meta.json``
    format name and version, the reference model's SHA-256, the evaluated tokens' SHA-256, the
    scoring protocol, ``n_vocab``, ``top_k``, ``n_chunks`` and ``scored_per_chunk``.
``top_ids.npy`` (int32), ``top_logp.npy`` (float64)
    shape ``(n_chunks, scored_per_chunk, top_k)``: the reference's most probable tokens at each
    scored position and their exact log-probabilities.
``tail_logp.npy``, ``target_logp.npy`` (float64)
    shape ``(n_chunks, scored_per_chunk)``: log of the mass outside the top tokens, and the exact
    log-probability of the token that follows.

That is ``12 * top_k + 16`` bytes per scored token whatever the vocabulary: 784 KB per 1,000
tokens at the default ``top_k = 64``, against 64 MB per 1,000 tokens for the 16-bit full-vocabulary
file of ``llama-perplexity --kl-divergence-base`` with a 32k vocabulary. Arrays are written into
memory-mapped files chunk by chunk, so building an entry needs no more memory than one batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from pytest_quantcheck.backends import Model
from pytest_quantcheck.evaluation import ScoringProtocol, scored_groups
from pytest_quantcheck.metrics.kld import ReferenceRows, reference_rows

FORMAT = "pytest-quantcheck reference log-probs"
VERSION = 1
DEFAULT_TOP_K = 64
_ARRAYS = ("top_ids", "top_logp", "tail_logp", "target_logp")


class ReferenceStoreError(ValueError):
    """A reference entry that is missing, damaged, or made for other inputs."""


@dataclass(frozen=True)
class ReferenceStore:
    path: Path
    meta: dict[str, Any]

    @property
    def n_chunks(self) -> int:
        return int(self.meta["n_chunks"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    def rows(self) -> Iterator[ReferenceRows]:
        arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        for i in range(self.n_chunks):
            yield ReferenceRows(
                top_ids=np.asarray(arrays["top_ids"][i]),
                top_logp=np.asarray(arrays["top_logp"][i]),
                tail_logp=np.asarray(arrays["tail_logp"][i]),
                target_logp=np.asarray(arrays["target_logp"][i]),
            )


def write_reference(
    dest: Path,
    model: Model,
    tokens: np.ndarray[Any, np.dtype[np.int32]],
    proto: ScoringProtocol,
    n_chunks: int,
    top_k: int,
    meta: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Evaluate the reference ``model`` and write an entry at ``dest`` (a new directory)."""
    dest.mkdir(parents=True)
    k = min(top_k, model.n_vocab)
    n, s = n_chunks, proto.scored_per_chunk
    out = {
        "top_ids": open_memmap(dest / "top_ids.npy", "w+", np.int32, (n, s, k)),
        "top_logp": open_memmap(dest / "top_logp.npy", "w+", np.float64, (n, s, k)),
        "tail_logp": open_memmap(dest / "tail_logp.npy", "w+", np.float64, (n, s)),
        "target_logp": open_memmap(dest / "target_logp.npy", "w+", np.float64, (n, s)),
    }
    for group in scored_groups(model, tokens, proto, n_chunks, progress):
        for row, (targets, logits) in enumerate(zip(group.targets, group.logits)):
            rows = reference_rows(logits, targets, k)
            i = group.first_chunk + row
            for name in _ARRAYS:
                out[name][i] = getattr(rows, name)
    for arr in out.values():
        arr.flush()
    del out
    record = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "n_vocab": model.n_vocab,
        "top_k": k,
        "n_chunks": n_chunks,
        "scored_per_chunk": s,
        "protocol": proto.describe(),
    }
    (dest / "meta.json").write_text(json.dumps(record, indent=1))


def open_reference(path: Path) -> ReferenceStore:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReferenceStoreError(f"{path}: reference entry unreadable ({exc}); delete it") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ReferenceStoreError(
            f"{path}: not a version {VERSION} reference entry; delete it to rebuild"
        )
    for name in _ARRAYS:
        file = path / f"{name}.npy"
        try:
            arr = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ReferenceStoreError(f"{file}: damaged ({exc}); delete {path}") from None
        if arr.shape[:2] != (meta["n_chunks"], meta["scored_per_chunk"]):
            raise ReferenceStoreError(f"{file}: shape {arr.shape} does not match {path}/meta.json")
    return ReferenceStore(path, meta)


def is_valid(path: Path) -> bool:
    try:
        open_reference(path)
    except ReferenceStoreError:
        return False
    return True
