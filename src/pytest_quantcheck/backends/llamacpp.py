"""llama.cpp through llama-cpp-python's C bindings: the only module that imports ``llama_cpp``.

We use the low-level API rather than ``llama_cpp.Llama`` because the protocols we reproduce
(``llama-perplexity``, ``llama-quantize``) need control the high-level class does not give:
several sequences in one batch, logits only at scored positions, and quantization.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import FILE_TYPE_MIX, BackendError, QuantizeOptions, RunOptions
from pytest_quantcheck.metrics.memory import MemoryUsage

_init_lock = threading.Lock()
_initialized = False
_verbose = False


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: Any) -> None:
    # llama.cpp logs a great deal at load time; silent unless the user asked for it.
    if _verbose:
        sys.stderr.write(text.decode("utf-8", errors="replace"))


def _ensure_initialized(verbose: bool) -> None:
    global _initialized, _verbose
    with _init_lock:
        _verbose = verbose
        if not _initialized:
            lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _initialized = True


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [("cpumask", ctypes.c_bool * 512),  # GGML_MAX_N_THREADS
                ("n_threads", ctypes.c_int), ("prio", ctypes.c_int), ("poll", ctypes.c_uint32),
                ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]


def _threadpool_api() -> Any:
    """libllama with ggml's threadpool functions typed, or None where the build lacks them."""
    lib: Any = getattr(getattr(lc, "llama_cpp", None), "_lib", None)
    try:
        lib.ggml_threadpool_params_default.restype = _ThreadpoolParams
        lib.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        lib.ggml_threadpool_new.restype = ctypes.c_void_p
        lib.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        lib.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    except AttributeError:
        return None
    return lib


_THREADPOOL: Any = _threadpool_api()


class _NativeContext:
    """Owns one llama_context, its thread pool and one llama_batch (with NumPy views of its
    arrays); frees them exactly once.

    The thread pool is what llama.cpp's tools attach (common_threadpools, llama-bench), so decoding
    runs the same code path as theirs. Without one, ggml builds and tears down a pool for every
    decode: cheap where ggml uses OpenMP, a thread start per decode where it does not.
    """

    _ctx: Any = None
    _pool: Any = None

    def _open(self, model: LoadedLlamaCpp, params: Any, n_batch: int, what: str,
              seq_per_token: int = 1) -> None:
        ctx = lc.llama_init_from_model(model._model, params)
        if not ctx:
            raise BackendError(f"{model.path}: llama.cpp could not create a context of {what}")
        self._ctx = ctx
        if _THREADPOOL is not None:
            tpp = _THREADPOOL.ggml_threadpool_params_default(int(params.n_threads))
            self._pool = _THREADPOOL.ggml_threadpool_new(ctypes.byref(tpp))
            if self._pool:
                _THREADPOOL.llama_attach_threadpool(ctx, self._pool, None)
        self._batch = lc.llama_batch_init(n_batch, 0, seq_per_token)
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n_batch,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n_batch,))
        self._out = np.ctypeslib.as_array(self._batch.logits, shape=(n_batch,))

    def close(self) -> None:
        if self._ctx:
            lc.llama_batch_free(self._batch)
            if self._pool:
                _THREADPOOL.llama_detach_threadpool(self._ctx)
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._pool:
            _THREADPOOL.ggml_threadpool_free(self._pool)
            self._pool = None

    def __del__(self) -> None:
        self.close()


class LlamaCppContext(_NativeContext):
    def __init__(self, model: LoadedLlamaCpp, n_ctx: int, n_seq: int, n_batch: int,
                 embeddings: bool) -> None:
        if n_ctx < 2 or n_seq < 1 or n_batch < 1:
            raise ValueError(f"bad context shape n_ctx={n_ctx} n_seq={n_seq} n_batch={n_batch}")
        if n_seq > 1 and n_batch < n_seq * n_ctx:
            raise ValueError("several sequences per batch need n_batch >= n_seq * n_ctx")
        self.model = model
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        self.n_batch = min(n_batch, n_seq * n_ctx)
        self._embeddings = embeddings
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = self.n_batch
        # llama.cpp's tools use a physical batch of 512; the same split gives the same kernels.
        params.n_ubatch = min(512, self.n_batch)
        params.n_seq_max = n_seq
        params.n_threads = model.options.threads()
        params.n_threads_batch = model.options.threads()
        params.embeddings = embeddings
        params.no_perf = True
        if embeddings:
            params.pooling_type = lc.LLAMA_POOLING_TYPE_NONE
        self._open(model, params, self.n_batch, f"{n_seq} x {n_ctx} tokens; lower n_ctx or n_batch")
        self._seq_layout: tuple[int, int] | None = None
        self._gather: NDArray[np.float32] | None = None

    def _set_seq_ids(self, n_rows: int, row_len: int) -> None:
        if self._seq_layout == (n_rows, row_len):
            return  # the same layout as the last batch: seq ids are already in place
        seq_ptrs = self._batch.seq_id
        for i in range(n_rows * row_len):
            seq_ptrs[i][0] = i // row_len
        self._nseq[: n_rows * row_len] = 1
        self._seq_layout = (n_rows, row_len)

    def _decode(self, tokens: NDArray[np.int32], pos0: int, first: int | None) -> int:
        """Decode rows of ``tokens`` as sequences 0..k-1 starting at position ``pos0``;
        outputs at positions >= ``first`` (every position when ``first`` is None)."""
        k, n = tokens.shape
        total = k * n
        self._tok[:total] = tokens.reshape(-1)
        pos = np.arange(pos0, pos0 + n, dtype=np.int32)
        self._pos[:total] = np.tile(pos, k)
        self._set_seq_ids(k, n)
        want = np.ones(n, dtype=np.int8) if first is None else (pos >= first).astype(np.int8)
        self._out[:total] = np.tile(want, k)
        self._batch.n_tokens = total
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise BackendError(f"{self.model.path}: llama_decode failed with code {rc}")
        return int(want.sum() * k)

    def _check(self, chunks: NDArray[np.int32]) -> tuple[int, int]:
        if chunks.ndim != 2 or chunks.shape[1] != self.n_ctx or not 1 <= chunks.shape[0] <= self.n_seq:
            raise ValueError(f"chunks of shape {chunks.shape} do not fit {self.n_seq} x {self.n_ctx}")
        return chunks.shape[0], chunks.shape[1]

    def score_chunks(self, chunks: NDArray[np.int32], first: int) -> NDArray[np.float32]:
        k, n_ctx = self._check(chunks)
        n_vocab = self.model.n_vocab
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        if self.n_batch >= n_ctx:
            n_out = self._decode(chunks, 0, first)
            logits = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(n_out, n_vocab))
            return logits.reshape(k, n_ctx - first, n_vocab)
        # A chunk longer than a batch: decode it in pieces, gathering the scored rows.
        if self._gather is None:
            self._gather = np.empty((n_ctx - first, n_vocab), dtype=np.float32)
        gathered = 0
        for start in range(0, n_ctx, self.n_batch):
            piece = chunks[:, start : start + self.n_batch]
            n_out = self._decode(piece, start, first)
            if n_out:
                rows = lc.llama_get_logits(self._ctx)
                self._gather[gathered : gathered + n_out] = np.ctypeslib.as_array(
                    rows, shape=(n_out, n_vocab)
                )
                gathered += n_out
        return self._gather.reshape(1, n_ctx - first, n_vocab)

    def embed_chunks(self, chunks: NDArray[np.int32]) -> NDArray[np.float32]:
        if not self._embeddings:
            raise ValueError("this context was opened without embeddings")
        k, n_ctx = self._check(chunks)
        if self.n_batch < k * n_ctx:
            raise ValueError("embed_chunks needs the whole group in one batch")
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        n_out = self._decode(chunks, 0, None)
        n_embd = self.model.n_embd
        emb = np.ctypeslib.as_array(lc.llama_get_embeddings(self._ctx), shape=(n_out, n_embd))
        return emb.reshape(k, n_ctx, n_embd)


class LlamaCppBench(_NativeContext):
    def __init__(self, model: LoadedLlamaCpp, n_ctx: int, n_batch: int, n_ubatch: int) -> None:
        self.model = model
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = model.options.threads()
        params.no_perf = True
        self._open(model, params, n_batch, f"{n_ctx} tokens")
        self.n_batch = n_batch
        self._nseq[:] = 1
        for i in range(n_batch):
            self._batch.seq_id[i][0] = 0
        self._next_pos = 0

    def clear(self) -> None:
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), False)
        self._next_pos = 0

    def _decode(self, tokens: NDArray[np.int32]) -> None:
        n = len(tokens)
        self._tok[:n] = tokens
        self._pos[:n] = np.arange(self._next_pos, self._next_pos + n, dtype=np.int32)
        self._out[:n] = 0
        self._out[n - 1] = 1
        self._batch.n_tokens = n
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise BackendError(f"{self.model.path}: llama_decode failed with code {rc}")
        self._next_pos += n

    def prompt(self, tokens: NDArray[np.int32]) -> None:
        for start in range(0, len(tokens), self.n_batch):
            self._decode(tokens[start : start + self.n_batch])
        lc.llama_synchronize(self._ctx)

    def generate(self, tokens: NDArray[np.int32]) -> None:
        for i in range(len(tokens)):
            self._decode(tokens[i : i + 1])
            lc.llama_synchronize(self._ctx)


class LlamaCppBatch(_NativeContext):
    """llama-perplexity's task-mode context: ``n_seq`` sequences in one unified KV cache of
    ``n_ctx`` tokens, batches of ``n_batch`` tokens split into physical batches of 512."""

    def __init__(self, model: LoadedLlamaCpp, n_ctx: int, n_seq: int, n_batch: int) -> None:
        self.model = model
        self.n_batch = min(n_batch, n_ctx)
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = min(512, self.n_batch)
        params.n_seq_max = n_seq
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = model.options.threads()
        params.no_perf = True
        self._open(model, params, self.n_batch, f"{n_seq} sequences in {n_ctx} tokens; lower"
                   " n_ctx or the parallel sequences", seq_per_token=n_seq)
        self.n_seq = n_seq

    def decode(self, tokens: NDArray[np.int32], pos: NDArray[np.int32],
               seq_ids: Sequence[tuple[int, ...]], outputs: NDArray[np.bool_]) -> NDArray[np.float32]:
        n_vocab = self.model.n_vocab
        n_outputs = int(outputs.sum())
        # One piece (the usual case: n_batch covers the context): the rows are returned where
        # llama.cpp wrote them, not copied; several pieces are gathered into one array.
        single = len(tokens) <= self.n_batch
        result = None if single else np.empty((n_outputs, n_vocab), dtype=np.float32)
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        seq_ptrs = self._batch.seq_id
        done = 0
        for start in range(0, len(tokens), self.n_batch):
            end = min(start + self.n_batch, len(tokens))
            n = end - start
            self._tok[:n] = tokens[start:end]
            self._pos[:n] = pos[start:end]
            self._out[:n] = outputs[start:end]
            for i in range(n):
                ids = seq_ids[start + i]
                self._nseq[i] = len(ids)
                row = seq_ptrs[i]
                for k, sid in enumerate(ids):
                    row[k] = sid
            self._batch.n_tokens = n
            rc = lc.llama_decode(self._ctx, self._batch)
            if rc != 0:
                raise BackendError(f"{self.model.path}: llama_decode failed with code {rc}")
            n_out = int(outputs[start:end].sum())
            if n_out and result is None:
                return np.ctypeslib.as_array(lc.llama_get_logits(self._ctx),
                                             shape=(n_out, n_vocab))
            if n_out and result is not None:
                result[done: done + n_out] = np.ctypeslib.as_array(
                    lc.llama_get_logits(self._ctx), shape=(n_out, n_vocab))
                done += n_out
        return result if result is not None else np.empty((0, n_vocab), dtype=np.float32)


class LoadedLlamaCpp:
    def __init__(self, path: Path, options: RunOptions) -> None:
        self._model = None
        _ensure_initialized(options.verbose)
        self.path = path
        self.options = options
        params = lc.llama_model_default_params()
        params.n_gpu_layers = options.n_gpu_layers
        params.load_mode = lc.LLAMA_LOAD_MODE_MMAP
        model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise BackendError(
                f"{path}: llama.cpp could not load this model; check that it is a complete GGUF"
                " file of an architecture this llama.cpp supports (rerun with verbose for its log)"
            )
        self._model = model
        vocab = lc.llama_model_get_vocab(model)
        self._vocab = vocab
        self.n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        self.n_embd = int(lc.llama_model_n_embd(model))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(model))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
        self.bos_token = int(lc.llama_vocab_bos(vocab))

    def tokenize(self, text: bytes) -> NDArray[np.int32]:
        data = text
        capacity = len(data) + 2
        while True:
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, False)
            if n >= 0:
                return np.ctypeslib.as_array(buf, shape=(capacity,))[:n].astype(np.int32)
            capacity = -n

    def open_context(self, n_ctx: int, n_seq: int, n_batch: int, *,
                     embeddings: bool = False) -> LlamaCppContext:
        return LlamaCppContext(self, n_ctx, n_seq, n_batch, embeddings)

    def open_bench(self, n_ctx: int, n_batch: int, n_ubatch: int) -> LlamaCppBench:
        return LlamaCppBench(self, n_ctx, n_batch, n_ubatch)

    def open_batch(self, n_ctx: int, n_seq: int, n_batch: int) -> LlamaCppBatch:
        return LlamaCppBatch(self, n_ctx, n_seq, n_batch)

    def close(self) -> None:
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()


class LlamaCppBackend:
    name = "llama.cpp"
    version = f"llama-cpp-python {lc.__version__}"

    def __init__(self, isolate: bool = True) -> None:
        self.isolate = isolate  # first load of each file in a child process (see probe.py)

    def load(self, path: Path, options: RunOptions) -> LoadedLlamaCpp:
        if self.isolate:
            from pytest_quantcheck.backends.probe import probe

            probe(path, self.version)
        return LoadedLlamaCpp(path, options)

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
        _ensure_initialized(_verbose)
        params = lc.llama_model_quantize_default_params()
        params.nthread = n_threads
        params.ftype = ftype
        params.pure = options.pure
        if options.token_embedding_type is not None:
            params.token_embedding_type = options.token_embedding_type
        if options.output_tensor_type is not None:
            params.output_tensor_type = options.output_tensor_type
        keep: list[Any] = []  # arrays the C side points into must outlive the call
        if options.tensor_types:
            overrides = (lc.llama_model_tensor_override * (len(options.tensor_types) + 1))()
            for i, (pattern, type_id) in enumerate(options.tensor_types):
                overrides[i].pattern = pattern.encode()
                overrides[i].type = type_id
            overrides[len(options.tensor_types)].pattern = None  # the list ends at a null pattern
            keep.append(overrides)
            params.tt_overrides = overrides
        if imatrix:
            entries = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
            for i, (name, values) in enumerate(sorted(imatrix.items())):
                arr = np.ascontiguousarray(values, dtype=np.float32)
                keep.append(arr)
                entries[i].name = name.encode()
                entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                entries[i].size = arr.size
            entries[len(imatrix)].name = None  # the list ends at a null name
            keep.append(entries)
            params.imatrix = entries
        rc = lc.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
        if rc != 0:
            raise BackendError(
                f"{source}: llama.cpp failed to quantize this model (code {rc}); rerun with"
                " verbose for its log"
            )

    def system_info(self) -> str:
        info: bytes = lc.llama_print_system_info()
        return info.decode(errors="replace").strip()

    def measure_memory(self, path: Path, options: RunOptions, n_ctx: int, n_seq: int,
                       n_batch: int) -> MemoryUsage:
        from pytest_quantcheck.backends.memory import measure

        if self.isolate:  # a file that crashes llama.cpp says so, rather than "measuring failed"
            from pytest_quantcheck.backends.probe import probe

            probe(path, self.version)
        return measure(path, options, n_ctx, n_seq, n_batch)
