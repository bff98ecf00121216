"""A fake backend: a tiny causal "model" in NumPy, so the pure layers are tested without llama.cpp.

Its logits at position t depend on the token at t and on the first token of the sequence, so
both the chunking protocol and the BOS replacement are visible in the numbers.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import RunOptions

N_VOCAB = 259  # 256 bytes, BOS = 256, EOS = 257, one unused
BOS = 256


class FakeContext:
    def __init__(self, model: FakeModel, n_ctx: int, n_seq: int, n_batch: int) -> None:
        self.model, self.n_ctx, self.n_seq, self.n_batch = model, n_ctx, n_seq, n_batch
        model.contexts_opened += 1

    def score_chunks(self, chunks: NDArray[np.int32], first: int) -> NDArray[np.float32]:
        assert chunks.shape[1] == self.n_ctx and chunks.shape[0] <= self.n_seq
        return np.stack([self.model.sequence_logits(row)[first:] for row in chunks])

    def embed_chunks(self, chunks: NDArray[np.int32]) -> NDArray[np.float32]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FakeModel:
    def __init__(self, path: Path, scale: float = 1.0, add_bos: bool = True) -> None:
        self.path = path
        self.n_vocab = N_VOCAB
        self.n_embd = 8
        self.n_ctx_train = 4096
        self.add_bos = add_bos
        self.bos_token = BOS
        self.contexts_opened = 0
        # A "quantized" fake is the same table with its weights perturbed by `scale`-seeded noise.
        rng = np.random.default_rng(0)
        self.table = rng.normal(0, 3, (N_VOCAB, N_VOCAB)).astype(np.float32)
        self.first = rng.normal(0, 1, (N_VOCAB, N_VOCAB)).astype(np.float32)
        data = path.read_bytes()[4:12] if path.exists() else b""
        noise = float(np.frombuffer(data.ljust(8, b"\0"), dtype="<f8")[0]) if data else 0.0
        if noise:
            self.table += np.random.default_rng(1).normal(0, noise, self.table.shape).astype(
                np.float32)

    def sequence_logits(self, seq: NDArray[np.int32]) -> NDArray[np.float32]:
        """Logits at every position of one sequence decoded from an empty cache."""
        return (self.table[seq] + self.first[seq[0]][None, :]).astype(np.float32)

    def tokenize(self, text: bytes) -> NDArray[np.int32]:
        toks = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
        return np.concatenate([[BOS], toks]).astype(np.int32) if self.add_bos else toks

    def open_context(self, n_ctx: int, n_seq: int, n_batch: int, *,
                     embeddings: bool = False) -> FakeContext:
        return FakeContext(self, n_ctx, n_seq, n_batch)

    def close(self) -> None:
        pass


def write_fake_gguf(path: Path, noise: float = 0.0) -> Path:
    """A file the fake backend loads: GGUF magic, then the noise level of its weights."""
    path.write_bytes(b"GGUF" + np.float64(noise).tobytes() + b"\0" * 32)
    return path


class FakeBackend:
    name = "fake"

    def __init__(self, version: str = "fake 1", log: Path | None = None) -> None:
        self.version = version
        self.log = log
        self.loads = 0

    def load(self, path: Path, options: RunOptions) -> FakeModel:
        self.loads += 1
        return FakeModel(path)

    def quantize(self, source: Path, dest: Path, ftype: int, *, n_threads: int,
                 imatrix: Mapping[str, NDArray[np.float32]] | None = None) -> None:
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"{ftype}\n")
        shutil.copyfile(source, dest)
        with dest.open("ab") as f:
            f.write(bytes([ftype]))

    def system_info(self) -> str:
        return "fake"
