"""Reference log-probabilities on disk, so each variant is compared without re-running the reference.

An entry is a directory:

``meta.json``
    format name and version, the reference model's SHA-256, the evaluated tokens' SHA-256, the
    scoring protocol, ``n_vocab``, ``tail_mass``, ``max_tokens``, ``n_chunks``, ``scored_per_chunk``.
``offsets.npy`` (int64, ``n_chunks * scored_per_chunk + 1``)
    where each scored position's kept tokens start in the two flat files below.
``ids.bin`` (int32), ``logp.bin`` (float32), little-endian, no header
    the reference's most probable tokens at each position, until all but ``tail_mass`` of its
    probability is covered (at most ``max_tokens``), and their log-probabilities.
``tail_logp.npy``, ``target_logp.npy`` (float64), ``top1.npy`` (int32), shape ``(n_chunks, scored)``
    log of the mass outside the kept tokens, the exact log-probability of the next token, and the
    reference's most probable token.

Size: ``8 * kept + 20`` bytes per scored token. ``kept`` depends on how sure the reference is:
at most ``max_tokens`` (16,384 by default), so at most 131 MB per 1,000 tokens whatever the
vocabulary, against 64 MB per 1,000 tokens for the 16-bit full-vocabulary file of
``llama-perplexity --kl-divergence-base`` with a 32k vocabulary and 524 MB with a 262k one; a
confident model keeps far fewer.
The files are written chunk by chunk, so building an entry needs no more memory than one batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from pytest_quantcheck.backends import LoadedModel
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.evaluation import ScoringProtocol, scored_groups
from pytest_quantcheck.metrics.kld import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TAIL_MASS,
    ReferenceRows,
    reference_rows,
)
from pytest_quantcheck.metrics.perplexity import PerplexityResult, perplexity_from_nll

FORMAT = "pytest-quantcheck reference log-probs"
VERSION = 2  # 2: rows summed as metrics/logprobs.py sums them
_DENSE = {"tail_logp": np.float64, "target_logp": np.float64, "top1": np.int32}
_FLAT = {"ids": np.dtype("<i4"), "logp": np.dtype("<f4")}


class ReferenceStoreError(QuantcheckError, ValueError):
    """A reference entry that is missing, damaged, or made for other inputs."""


@dataclass(frozen=True)
class ReferenceStore:
    path: Path
    meta: dict[str, Any]
    decoded: int = 0  # chunks decoded by the call that returned it (0: found in the cache)

    @property
    def n_chunks(self) -> int:
        return int(self.meta["n_chunks"])

    @property
    def n_available(self) -> int:
        """Chunks the text offers under the protocol (the entry may hold the first ones only)."""
        return int(self.meta.get("n_available", self.n_chunks))

    def perplexity(self) -> PerplexityResult:
        """The reference's own perplexity, from its stored next-token log-probabilities: the same
        float64 values a perplexity run computes, so the result is identical, without decoding."""
        target_logp = np.load(self.path / "target_logp.npy")
        return perplexity_from_nll(-np.asarray(target_logp, dtype=np.float64),
                                   int(self.meta["protocol"]["n_ctx"]),
                                   str(self.meta["tokens_sha256"]), self.n_available)

    def rows(self, start: int = 0) -> Iterator[ReferenceRows]:
        """One :class:`ReferenceRows` per chunk from chunk ``start``, read lazily from the
        memory-mapped files."""
        offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        dense = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in _DENSE}
        flat = {name: np.memmap(self.path / f"{name}.bin", dtype=dt, mode="r")
                for name, dt in _FLAT.items()}
        s = int(self.meta["scored_per_chunk"])
        for i in range(start, self.n_chunks):
            off = np.asarray(offsets[i * s : (i + 1) * s + 1])
            lo, hi = int(off[0]), int(off[-1])
            yield ReferenceRows(
                offsets=off - lo,
                ids=np.asarray(flat["ids"][lo:hi]),
                logp=np.asarray(flat["logp"][lo:hi]),
                tail_logp=np.asarray(dense["tail_logp"][i]),
                target_logp=np.asarray(dense["target_logp"][i]),
                top1=np.asarray(dense["top1"][i]),
            )


def write_reference(
    dest: Path,
    model: LoadedModel,
    tokens: np.ndarray[Any, np.dtype[np.int32]],
    proto: ScoringProtocol,
    n_chunks: int,
    meta: dict[str, Any],
    tail_mass: float = DEFAULT_TAIL_MASS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Callable[[int, int], None] | None = None,
    previous: ReferenceStore | None = None,
    threads: int = 1,
) -> None:
    """Evaluate the reference ``model`` and write an entry at ``dest`` (a new directory),
    starting with ``previous``'s chunks where given (an entry of the same inputs holding the
    first chunks: copied, not decoded again)."""
    dest.mkdir(parents=True)
    n, s = n_chunks, proto.scored_per_chunk
    have = 0 if previous is None else min(previous.n_chunks, n)
    dense = {name: open_memmap(dest / f"{name}.npy", "w+", dt, (n, s))
             for name, dt in _DENSE.items()}
    offsets = open_memmap(dest / "offsets.npy", "w+", np.int64, (n * s + 1,))
    offsets[0] = 0
    with (dest / "ids.bin").open("wb") as ids_out, (dest / "logp.bin").open("wb") as logp_out:
        if previous is not None and have:
            old_offsets = np.load(previous.path / "offsets.npy", mmap_mode="r")
            offsets[: have * s + 1] = old_offsets[: have * s + 1]
            for name in _DENSE:
                dense[name][:have] = np.load(previous.path / f"{name}.npy", mmap_mode="r")[:have]
            kept = int(old_offsets[have * s])
            for out, name in ((ids_out, "ids"), (logp_out, "logp")):
                with (previous.path / f"{name}.bin").open("rb") as src:
                    out.write(src.read(kept * _FLAT[name].itemsize))
        for group in scored_groups(model, tokens, proto, n_chunks, progress, have):
            for row, (targets, logits) in enumerate(zip(group.targets, group.logits, strict=True)):
                rows = reference_rows(logits, targets, tail_mass, max_tokens, threads)
                i = group.first_chunk + row
                base = int(offsets[i * s])
                offsets[i * s + 1 : (i + 1) * s + 1] = base + rows.offsets[1:]
                ids_out.write(rows.ids.astype(_FLAT["ids"]).tobytes())
                logp_out.write(rows.logp.astype(_FLAT["logp"]).tobytes())
                for name in _DENSE:
                    dense[name][i] = getattr(rows, name)
    for arr in (*dense.values(), offsets):
        arr.flush()
    record = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "n_vocab": model.n_vocab,
        "tail_mass": tail_mass,
        "max_tokens": max_tokens,
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
    try:
        shape = (meta["n_chunks"], meta["scored_per_chunk"])
        offsets = np.load(path / "offsets.npy", mmap_mode="r")
        if offsets.shape != (shape[0] * shape[1] + 1,):
            raise ValueError(f"offsets.npy has shape {offsets.shape}")
        for name in _DENSE:
            if np.load(path / f"{name}.npy", mmap_mode="r").shape != shape:
                raise ValueError(f"{name}.npy does not match meta.json")
        for name, dt in _FLAT.items():
            if (path / f"{name}.bin").stat().st_size != int(offsets[-1]) * dt.itemsize:
                raise ValueError(f"{name}.bin has the wrong size")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReferenceStoreError(f"{path}: reference entry damaged ({exc}); delete it") from None
    return ReferenceStore(path, meta)


def is_valid(path: Path) -> bool:
    try:
        open_reference(path)
    except ReferenceStoreError:
        return False
    return True


def held(folder: Path, prefix: str, upto: int | None
         ) -> tuple[ReferenceStore | None, ReferenceStore | None]:
    """Among the valid entries ``folder`` holds under ``prefix`` (one reference, text and
    protocol; entries of different lengths): one that serves a request for every chunk or the
    first ``upto`` (a complete entry serves every request), else None; and the largest held,
    to extend rather than decode again."""
    largest = None
    for entry in sorted(folder.glob(f"{prefix}*")) if folder.is_dir() else ():
        if entry.name.startswith(".") or not is_valid(entry):
            continue  # a temporary folder being written, or a damaged entry
        store = open_reference(entry)
        if store.meta.get("complete") or (upto is not None and store.n_chunks >= upto):
            return store, None
        if largest is None or store.n_chunks > largest.n_chunks:
            largest = store
    return None, largest
