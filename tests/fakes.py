"""A fake backend: a tiny causal "model" in NumPy, so everything above the backend is tested
without llama.cpp, in milliseconds.

Its logits at position t are a byte-bigram model of a fixed corpus of words (so it predicts
text of the same words well), plus a small term that depends on the first token of the sequence,
so both the chunking protocol and the BOS replacement are visible in the numbers. Model files are
real (tiny) GGUF files whose ``fake.noise`` says how far their weights stray from the "base";
the fake quantizer adds more noise the fewer bits a type has.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import FILE_TYPE_MIX, QuantizeOptions, RunOptions
from pytest_quantcheck.gguf_file import read_gguf, write_gguf
from pytest_quantcheck.gpu import GpuReport
from pytest_quantcheck.metrics.memory import MemoryUsage, MiB

N_VOCAB = 259  # 256 bytes, BOS = 256, EOS = 257, one unused
BOS = 256
# ftype -> noise the fake quantizer adds; unknown types get 0.2
# (about +0%, +1.7% and +10% perplexity for Q8_0, Q4_K_M and Q2_K)
TYPE_NOISE = {0: 0.0, 1: 0.001, 7: 0.01, 18: 0.03, 15: 0.3, 12: 0.4, 10: 0.6}


class FakeContext:
    def __init__(self, model: FakeLoaded, n_ctx: int, n_seq: int, n_batch: int) -> None:
        self.model, self.n_ctx, self.n_seq, self.n_batch = model, n_ctx, n_seq, n_batch
        model.contexts_opened += 1

    def score_chunks(self, chunks: NDArray[np.int32], first: int) -> NDArray[np.float32]:
        assert chunks.shape[1] == self.n_ctx and chunks.shape[0] <= self.n_seq
        return np.stack([self.model.sequence_logits(row)[first:] for row in chunks])

    def embed_chunks(self, chunks: NDArray[np.int32]) -> NDArray[np.float32]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FakeBatch:
    """A unified cache of ``n_seq`` sequences: each decoded token joins the sequences it names,
    and a logit row is the model's for its sequence's tokens so far."""

    def __init__(self, model: FakeLoaded, n_ctx: int, n_seq: int, n_batch: int) -> None:
        self.model, self.n_ctx, self.n_seq, self.n_batch = model, n_ctx, n_seq, n_batch
        self.decodes: list[int] = []  # tokens per decode call

    def decode(self, tokens: NDArray[np.int32], pos: NDArray[np.int32],
               seq_ids: Sequence[tuple[int, ...]], outputs: NDArray[np.bool_]) -> NDArray[np.float32]:
        assert len(tokens) <= self.n_ctx
        self.decodes.append(len(tokens))
        seqs: dict[int, list[int]] = {}
        rows = []
        for tok, p, ids, out in zip(tokens, pos, seq_ids, outputs, strict=True):
            assert all(0 <= s < self.n_seq for s in ids)
            for s in ids:
                seq = seqs.setdefault(s, [])
                assert len(seq) == p, "positions of a sequence must follow each other"
                seq.append(int(tok))
            if out:
                seq = np.array(seqs[ids[0]], dtype=np.int32)
                rows.append(self.model.sequence_logits(seq)[-1])
        return np.array(rows, dtype=np.float32).reshape(-1, N_VOCAB)

    def close(self) -> None:
        pass


WORDS = ["alpha", "beta", "gamma", "delta", "quant", "check", "model", "token"]


def word_text(n_words: int, seed: int = 7) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, size=n_words))


_TABLE: list[NDArray[np.float32]] = []


def _bigram_table() -> NDArray[np.float32]:
    if not _TABLE:
        data = np.frombuffer(word_text(20000, seed=1).encode(), dtype=np.uint8).astype(np.int64)
        counts = np.full((N_VOCAB, N_VOCAB), 0.01)
        np.add.at(counts, (data[:-1], data[1:]), 1.0)
        counts[BOS, data[0]] += 1.0
        _TABLE.append(np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32))
    return _TABLE[0]


class FakeBench:
    """Records calls; decoding costs nothing, or sleeps as long as a model of ``fake.speed``
    tokens/s would take, so throughput checks see a controlled speed."""

    def __init__(self, n_ctx: int, n_batch: int, n_ubatch: int, speed: float = 0.0) -> None:
        self.n_ctx, self.n_batch, self.n_ubatch, self.speed = n_ctx, n_batch, n_ubatch, speed
        self.calls: list[tuple[str, int]] = []
        self.filled = 0

    def clear(self) -> None:
        self.calls.append(("clear", 0))
        self.filled = 0

    def _work(self, n: int) -> None:
        if self.speed:
            time.sleep(n / self.speed)

    def prompt(self, tokens: NDArray[np.int32]) -> None:
        self.calls.append(("prompt", len(tokens)))
        self.filled += len(tokens)
        assert self.filled <= self.n_ctx
        self._work(len(tokens))

    def generate(self, tokens: NDArray[np.int32]) -> None:
        self.calls.append(("generate", len(tokens)))
        self.filled += len(tokens)
        assert self.filled <= self.n_ctx
        self._work(len(tokens))

    def close(self) -> None:
        pass


def noise_of(path: Path) -> float:
    return float(read_gguf(path).metadata.get("fake.noise", 0.0))


def speed_of(path: Path) -> float:
    return float(read_gguf(path).metadata.get("fake.speed", 0.0))


class FakeLoaded:
    def __init__(self, path: Path, add_bos: bool = True,
                 options: RunOptions = RunOptions()) -> None:
        self.path = path
        self.options = options  # as loaded: the thread count a bench sweep set
        self.n_vocab = N_VOCAB
        self.n_embd = 8
        self.n_ctx_train = 4096
        self.add_bos = add_bos
        self.bos_token = BOS
        self.contexts_opened = 0
        self.benches: list[FakeBench] = []
        self.batches: list[FakeBatch] = []
        self.table = _bigram_table().copy()
        self.first = np.random.default_rng(0).normal(0, 0.1, (N_VOCAB, N_VOCAB)).astype(np.float32)
        noise = noise_of(path)
        if noise:
            seed = int(noise * 1e6) % 2**31
            self.table += np.random.default_rng(seed).normal(0, noise, self.table.shape).astype(
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

    def open_bench(self, n_ctx: int, n_batch: int, n_ubatch: int) -> FakeBench:
        self.benches.append(FakeBench(n_ctx, n_batch, n_ubatch, speed_of(self.path)))
        return self.benches[-1]

    def open_batch(self, n_ctx: int, n_seq: int, n_batch: int) -> FakeBatch:
        self.batches.append(FakeBatch(self, n_ctx, n_seq, n_batch))
        return self.batches[-1]

    def close(self) -> None:
        pass


def write_fake_gguf(path: Path, noise: float = 0.0, ftype: int = 0, speed: float = 0.0) -> Path:
    """A small valid GGUF the fake backend loads; its size shrinks with the noise, like a quant.
    ``speed``: tokens/s its fake benchmark runs at (0: instantly)."""
    width = max(8, int(256 * (1 - min(noise, 0.9))))
    write_gguf(path, {"general.architecture": "fake", "general.file_type": ftype,
                      "fake.noise": float(noise), "fake.speed": float(speed)},
               {"weight": np.zeros((4, width), dtype=np.float16)})
    return path


class FakeBackend:
    name = "fake"

    def __init__(self, version: str = "fake 1", log: Path | None = None,
                 gpu: GpuReport | None = None) -> None:
        self.version = version
        self.log = log
        self.gpu = gpu or GpuReport(note="fake backend")
        self.loads = 0
        self.models: list[FakeLoaded] = []

    def load(self, path: Path, options: RunOptions) -> FakeLoaded:
        self.loads += 1
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"load {path.name}\n")
        self.models.append(FakeLoaded(path, options=options))
        return self.models[-1]

    def quantize(self, source: Path, dest: Path, ftype: int, *, n_threads: int,
                 imatrix: Mapping[str, NDArray[np.float32]] | None = None,
                 options: QuantizeOptions = FILE_TYPE_MIX) -> None:
        """A recipe's options are logged, and higher-precision embeddings or outputs lower the
        fake's noise a little, so a recipe is a model of its own."""
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"quantize {ftype}" + (f" {options}" if options != FILE_TYPE_MIX
                                               else "") + "\n")
        noise = TYPE_NOISE.get(ftype, 0.2)
        if options.token_embedding_type is not None or options.output_tensor_type is not None:
            noise *= 0.9
        write_fake_gguf(dest, noise_of(source) + noise, ftype,
                        speed_of(source) * (1 + noise))

    def system_info(self) -> str:
        return "CPU : FAKE = 1 | SIMD = 0 |"

    def measure_memory(self, path: Path, options: RunOptions, n_ctx: int, n_seq: int,
                       n_batch: int) -> MemoryUsage:
        """40 MiB before the load; the file, its KV cache and one batch of logits after it."""
        before = 40 * MiB
        kv = 2 * n_ctx * n_seq * 8 * 4
        peak = before + path.stat().st_size + kv + n_batch * N_VOCAB * 4
        return MemoryUsage(before, peak, self.gpu)
