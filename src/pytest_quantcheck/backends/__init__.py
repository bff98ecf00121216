"""The inference backend seen by the rest of the package, as Protocols.

Everything above this layer talks to a model through these types only, so the pure layers can be
tested with a fake backend and only :mod:`pytest_quantcheck.backends.llamacpp` imports
``llama_cpp``. :func:`default_backend` imports it lazily, on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.errors import QuantcheckError

if TYPE_CHECKING:
    from pytest_quantcheck.metrics.memory import MemoryUsage


class BackendError(QuantcheckError, RuntimeError):
    """llama.cpp refused a file or an operation; the message names the file and the fix."""


def physical_cores() -> int:
    """Physical cores available to this process, counted the way llama.cpp counts its default.

    llama.cpp's tools default to one thread per physical core (hyper-threads share the units
    that matrix code saturates), so the same default keeps our timings comparable with theirs.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    siblings: set[str] = set()
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings")
        try:
            siblings.add(path.read_text().strip())
        except OSError:
            return len(cpus)
    return max(1, len(siblings))


@dataclass(frozen=True)
class QuantizeOptions:
    """A recipe's departures from a file type's own mix, as llama-quantize's options: the types
    of the token embeddings and the output tensor, types for tensors whose names match a regular
    expression (``--tensor-type PATTERN=TYPE``, the first match wins), and ``pure`` (every tensor
    at the file type's type). Types are ggml type ids."""

    token_embedding_type: int | None = None
    output_tensor_type: int | None = None
    tensor_types: tuple[tuple[str, int], ...] = ()
    pure: bool = False


FILE_TYPE_MIX = QuantizeOptions()  # a file type as llama.cpp mixes it, nothing changed


@dataclass(frozen=True)
class RunOptions:
    """How llama.cpp runs a model; none of these change the numbers it computes on a CPU."""

    n_threads: int | None = None  # None: one per physical core, as llama.cpp's tools do
    n_gpu_layers: int = 0
    verbose: bool = False  # pass llama.cpp's own log output through to stderr

    def threads(self) -> int:
        return self.n_threads if self.n_threads is not None else physical_cores()


class EvalContext(Protocol):
    """A context holding ``n_seq`` sequences of ``n_ctx`` tokens side by side."""

    n_ctx: int
    n_seq: int

    def score_chunks(self, chunks: NDArray[np.int32], first: int) -> NDArray[np.float32]:
        """Decode each row of ``chunks`` (shape ``(k, n_ctx)``, ``k <= n_seq``) as its own
        sequence from an empty cache; return logits for positions ``first .. n_ctx-1``.

        The result has shape ``(k, n_ctx - first, n_vocab)``. It may be a view into the
        backend's buffer that is valid only until the next call.
        """
        ...

    def embed_chunks(self, chunks: NDArray[np.int32]) -> NDArray[np.float32]:
        """Final normalized hidden states, shape ``(k, n_ctx, n_embd)``; needs ``embeddings``."""
        ...

    def close(self) -> None: ...


class BatchContext(Protocol):
    """A context of ``n_ctx`` tokens shared by up to ``n_seq`` sequences (one unified KV cache,
    as llama-perplexity's task modes use), decoding batches laid out by the caller."""

    def decode(self, tokens: NDArray[np.int32], pos: NDArray[np.int32],
               seq_ids: Sequence[tuple[int, ...]], outputs: NDArray[np.bool_]) -> NDArray[np.float32]:
        """Empty the cache, decode the tokens (token ``i`` at position ``pos[i]`` in every
        sequence of ``seq_ids[i]``) in pieces of ``n_batch``, and return the logits of the
        tokens whose ``outputs`` flag is set, in order: shape ``(outputs.sum(), n_vocab)``.
        It may be a view into the backend's buffer that is valid only until the next call."""
        ...

    def close(self) -> None: ...


class BenchContext(Protocol):
    """A context for ``llama-bench``-style timing: one sequence, nothing but decoding."""

    def clear(self) -> None:
        """Empty the KV cache (not timed by llama-bench)."""
        ...

    def prompt(self, tokens: NDArray[np.int32]) -> None:
        """Decode ``tokens`` from position 0 in batches of ``n_batch``, logits for the last
        token only, then wait for the device (llama-bench's ``test_prompt``)."""
        ...

    def generate(self, tokens: NDArray[np.int32]) -> None:
        """Decode ``tokens`` one at a time after whatever the cache holds, waiting for each
        (llama-bench's ``test_gen``)."""
        ...

    def close(self) -> None: ...


class LoadedModel(Protocol):
    """A model file loaded by a backend: weights in memory, a tokenizer, and contexts to decode
    in. (A *model* elsewhere is a model under test, :class:`~pytest_quantcheck.models.QuantModel`;
    its file is a :class:`~pytest_quantcheck.variants.Variant`.)"""

    path: Path
    n_vocab: int
    n_embd: int
    n_ctx_train: int
    add_bos: bool
    bos_token: int

    def tokenize(self, text: bytes) -> NDArray[np.int32]:
        """Tokens of UTF-8 ``text``, with BOS when the vocabulary adds one (llama.cpp's rule).

        Bytes, not ``str``: llama.cpp tokenizes the file's bytes as they are."""
        ...

    def open_context(
        self, n_ctx: int, n_seq: int, n_batch: int, *, embeddings: bool = False
    ) -> EvalContext: ...

    def open_bench(self, n_ctx: int, n_batch: int, n_ubatch: int) -> BenchContext: ...

    def open_batch(self, n_ctx: int, n_seq: int, n_batch: int) -> BatchContext: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    version: str  # identifies the inference code; part of every cache key

    def load(self, path: Path, options: RunOptions) -> LoadedModel: ...

    def quantize(
        self,
        source: Path,
        dest: Path,
        ftype: int,
        *,
        n_threads: int,
        imatrix: Mapping[str, NDArray[np.float32]] | None = None,
        options: QuantizeOptions = FILE_TYPE_MIX,
    ) -> None:
        """Write ``source`` quantized to llama.cpp file type ``ftype`` into ``dest``."""
        ...

    def system_info(self) -> str: ...

    def measure_memory(self, path: Path, options: RunOptions, n_ctx: int, n_seq: int,
                       n_batch: int) -> MemoryUsage:
        """Resident (and GPU) memory of loading ``path`` and decoding one batch of ``n_seq``
        sequences of ``n_ctx`` tokens, measured apart from this process's own allocations."""
        ...


def default_backend() -> Backend:
    """The llama.cpp backend; importing it is what loads the native library."""
    from pytest_quantcheck.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend()
