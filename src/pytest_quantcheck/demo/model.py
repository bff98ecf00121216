"""The built-in demo model: a small llama-architecture GGUF made from the text this package ships.

No deep-learning framework and no download. The network is wired by hand so every tensor does
real work, and only the output layer is fitted:

* token embeddings are the leading singular vectors of the training text's bigram statistics;
* in each layer, attention head 0 attends to the previous position (its query and key read a
  constant residual dimension and are phased so RoPE peaks at a distance of one) and copies a
  subspace forward: layer 0 copies the current token's embedding, layer 1 the copy of layer 0,
  so the final state holds tokens t, t-1 and t-2;
* the feed-forward blocks add random SwiGLU features of those three tokens;
* the output matrix is fitted by softmax regression (L-BFGS) on the final hidden states that
  llama.cpp itself computes for the training text, so the fit is exact for llama.cpp's forward pass.

Every weight matrix is 256 wide (or 768 for ``ffn_down``), a multiple of 256, so every K-quant
applies without fallback.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from pytest_quantcheck import cache
from pytest_quantcheck.backends import Backend, LoadedModel, RunOptions, default_backend
from pytest_quantcheck.demo.vocab import BOS_ID, EOS_ID, UNK_ID, Vocab, learn_vocab
from pytest_quantcheck.gguf_file import write_gguf

BUILDER_VERSION = 1
N_VOCAB = 1024
N_EMBD = 256
N_HEAD = 4
HEAD_DIM = N_EMBD // N_HEAD
N_LAYER = 2
N_FF = 768
N_CTX_TRAIN = 1024
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
FIT_CTX = 256  # the chunk length the output layer is fitted on
FIT_EVERY = 4  # every 4th chunk of the training text: ~35k positions
FIT_ITERATIONS = 40

# Residual stream layout.
CONST = 0
CUR = slice(1, 65)
PREV = slice(65, 129)
PREV2 = slice(129, 193)
FFN_OUT = (slice(193, 225), slice(225, 256))


def data_path(name: str) -> Path:
    """A file shipped in ``pytest_quantcheck/demo/data`` (``train.txt``, ``eval.txt``)."""
    return Path(str(resources.files("pytest_quantcheck.demo") / "data" / name))


@dataclass(frozen=True)
class BuildReport:
    path: Path
    seconds: float
    train_tokens: int
    train_nll: float  # mean NLL of the fitted output layer on the training positions


def llama_metadata(vocab: Vocab) -> dict[str, Any]:
    return {
        "general.architecture": "llama",
        "general.name": "pytest-quantcheck demo",
        "general.file_type": 0,  # all F32
        "llama.context_length": N_CTX_TRAIN,
        "llama.embedding_length": N_EMBD,
        "llama.block_count": N_LAYER,
        "llama.feed_forward_length": N_FF,
        "llama.attention.head_count": N_HEAD,
        "llama.attention.head_count_kv": N_HEAD,
        "llama.attention.layer_norm_rms_epsilon": RMS_EPS,
        "llama.rope.dimension_count": HEAD_DIM,
        "llama.rope.freq_base": ROPE_BASE,
        "llama.vocab_size": len(vocab),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": vocab.pieces,
        "tokenizer.ggml.scores": vocab.scores,
        "tokenizer.ggml.token_type": vocab.types,
        "tokenizer.ggml.bos_token_id": BOS_ID,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.ggml.unknown_token_id": UNK_ID,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }


def _bigram_embeddings(tokens: NDArray[np.int32], rng: np.random.Generator) -> tuple[
        NDArray[np.float32], NDArray[np.float32]]:
    """Token embeddings and a first guess of the output layer.

    The embeddings (unit RMS in the CUR subspace) are the leading left singular vectors of the
    smoothed log-probability of the next token given this one; the matching right singular
    vectors, as output rows, make the model a low-rank bigram model: the fit starts there.
    """
    v = N_VOCAB
    pairs = np.bincount(tokens[:-1].astype(np.int64) * v + tokens[1:], minlength=v * v)
    counts = pairs.reshape(v, v).astype(np.float64) + 0.1
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    logp -= logp.mean(axis=1, keepdims=True)
    u, s, vt = np.linalg.svd(logp, full_matrices=False)
    width = CUR.stop - CUR.start
    emb = u[:, :width] * np.sqrt(s[:width])
    out = np.zeros((v, N_EMBD))
    out[:, CUR] = vt[:width].T * np.sqrt(s[:width]) * np.sqrt(np.mean(np.square(emb)))
    emb += 1e-3 * rng.standard_normal(emb.shape)  # no all-zero rows
    emb /= np.sqrt(np.mean(np.square(emb), axis=1, keepdims=True))
    full = np.zeros((v, N_EMBD))
    full[:, CONST] = 1.0
    full[:, CUR] = emb
    return full.astype(np.float32), out.astype(np.float32)


def _previous_token_head(
    rng: np.random.Generator, src: slice, dst: slice, gain: float
) -> dict[str, NDArray[np.float64]]:
    """Attention weights whose head 0 copies ``src`` of position t-1 into ``dst`` of position t."""
    wq = 0.02 * rng.standard_normal((N_EMBD, N_EMBD))
    wk = 0.02 * rng.standard_normal((N_EMBD, N_EMBD))
    wv = 0.02 * rng.standard_normal((N_EMBD, N_EMBD))
    wo = np.zeros((N_EMBD, N_EMBD))
    wq[:HEAD_DIM] = wk[:HEAD_DIM] = wv[:HEAD_DIM] = 0.0
    # llama.cpp's "normal" RoPE rotates pairs (2i, 2i+1) by pos * base^(-2i/d). A constant query
    # and a key pre-rotated by one step score cos((m - n - 1) * theta_i): highest at distance 1.
    theta = ROPE_BASE ** (-2.0 * np.arange(HEAD_DIM // 2) / HEAD_DIM)
    pairs = np.arange(10)  # the fast-turning pairs separate distance 1 from 0 and 2
    r = 10.0
    wq[2 * pairs, CONST] = r
    wk[2 * pairs, CONST] = r * np.cos(theta[pairs])
    wk[2 * pairs + 1, CONST] = r * np.sin(theta[pairs])
    width = src.stop - src.start
    wv[np.arange(width), np.arange(src.start, src.stop)] = 1.0
    wo[np.arange(dst.start, dst.stop), np.arange(width)] = gain
    return {"attn_q": wq, "attn_k": wk, "attn_v": wv, "attn_output": wo}


def _ffn(rng: np.random.Generator, out: slice) -> dict[str, NDArray[np.float64]]:
    gate = rng.standard_normal((N_FF, N_EMBD)) / np.sqrt(N_EMBD)
    up = rng.standard_normal((N_FF, N_EMBD)) / np.sqrt(N_EMBD)
    down = np.zeros((N_EMBD, N_FF))
    down[out] = 1.6 * rng.standard_normal((out.stop - out.start, N_FF)) / np.sqrt(N_FF)
    return {"ffn_gate": gate, "ffn_up": up, "ffn_down": down}


def _tensors(embd: NDArray[np.float32], output: NDArray[np.float32],
             rng: np.random.Generator) -> dict[str, NDArray[np.float32]]:
    tensors: dict[str, NDArray[Any]] = {"token_embd.weight": embd}
    copies = ((CUR, PREV, 0.5), (PREV, PREV2, 0.8))
    for layer, (src, dst, gain) in enumerate(copies):
        parts: dict[str, NDArray[np.float64]] = {**_previous_token_head(rng, src, dst, gain),
                                                 **_ffn(rng, FFN_OUT[layer])}
        tensors[f"blk.{layer}.attn_norm.weight"] = np.ones(N_EMBD)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[f"blk.{layer}.{name}.weight"] = parts[name]
        tensors[f"blk.{layer}.ffn_norm.weight"] = np.ones(N_EMBD)
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            tensors[f"blk.{layer}.{name}.weight"] = parts[name]
    tensors["output_norm.weight"] = np.ones(N_EMBD)
    tensors["output.weight"] = output
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def _hidden_states(model: LoadedModel, tokens: NDArray[np.int32]) -> tuple[NDArray[np.float32],
                                                                     NDArray[np.int32]]:
    """llama.cpp's final normalized states for every position of BOS-led chunks, with targets."""
    n_seq = 8
    n_chunks = len(tokens) // FIT_CTX
    chunks = tokens[: n_chunks * FIT_CTX].reshape(n_chunks, FIT_CTX)[::FIT_EVERY].copy()
    n_chunks = len(chunks)
    targets = chunks[:, 1:].reshape(-1).copy()
    chunks[:, 0] = model.bos_token
    states = np.empty((n_chunks, FIT_CTX - 1, N_EMBD), dtype=np.float32)
    ctx = model.open_context(FIT_CTX, n_seq, n_seq * FIT_CTX, embeddings=True)
    try:
        for i in range(0, n_chunks, n_seq):
            group = chunks[i : i + n_seq]
            states[i : i + len(group)] = ctx.embed_chunks(group)[:, :-1]
    finally:
        ctx.close()
    return states.reshape(-1, N_EMBD), targets


def _fit_output(h: NDArray[np.float32], y: NDArray[np.int32], w0: NDArray[np.float32],
                l2: float = 1e-3) -> tuple[NDArray[np.float32], float]:
    """Multinomial logistic regression without bias by L-BFGS from ``w0``; returns (W, NLL)."""
    n = len(y)
    onehot_rows = np.arange(n)

    def loss(flat: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        w = flat.reshape(N_VOCAB, N_EMBD).astype(np.float32)
        z = h @ w.T
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        nll = float(np.mean(np.log(s[:, 0]) - z[onehot_rows, y]))
        g = e / s
        g[onehot_rows, y] -= 1.0
        grad = (g.T @ h) / n + 2 * l2 * w
        return nll + l2 * float(np.sum(w * w)), grad.astype(np.float64).reshape(-1)

    res = minimize(loss, w0.astype(np.float64).reshape(-1), jac=True, method="L-BFGS-B",
                   options={"maxiter": FIT_ITERATIONS})
    w = res.x.reshape(N_VOCAB, N_EMBD).astype(np.float32)
    z = h @ w.T
    z -= z.max(axis=1, keepdims=True)
    nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[onehot_rows, y]))
    return w, nll


def build_demo_model(
    dest: Path,
    backend: Backend,
    options: RunOptions = RunOptions(),
    log: Callable[[str], None] = lambda _msg: None,
) -> BuildReport:
    """Write the demo model to ``dest`` (a new file)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(20261123)
    text = data_path("train.txt").read_text(encoding="utf-8")
    vocab = learn_vocab(text, N_VOCAB)
    meta = llama_metadata(vocab)
    log(f"vocabulary: {len(vocab)} pieces ({time.perf_counter() - t0:.1f}s)")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        stage = Path(tmp) / "stage.gguf"
        zeros = np.zeros((N_VOCAB, N_EMBD), dtype=np.float32)
        write_gguf(stage, meta, _tensors(zeros, zeros, np.random.default_rng(0)))
        model = backend.load(stage, options)
        tokens = model.tokenize(text.encode("utf-8"))
        model.close()
        embd, w0 = _bigram_embeddings(tokens, rng)
        layers_rng_state = rng.bit_generator.state
        write_gguf(stage, meta, _tensors(embd, zeros, rng))
        model = backend.load(stage, options)
        h, y = _hidden_states(model, tokens)
        model.close()
        log(f"hidden states: {len(y)} positions ({time.perf_counter() - t0:.1f}s)")
        w, nll = _fit_output(h, y, w0)
        log(f"output layer fitted: train NLL {nll:.3f} ({time.perf_counter() - t0:.1f}s)")
        rng.bit_generator.state = layers_rng_state  # the same layer weights as the staged model
        write_gguf(dest, meta, _tensors(embd, w, rng))
    return BuildReport(dest, time.perf_counter() - t0, len(tokens), nll)


def demo_model_path(
    backend: Backend | None = None,
    options: RunOptions = RunOptions(),
    cache_dir: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """The demo model's path, building it into the cache on first use."""
    backend = backend or default_backend()
    root = cache_dir or cache.cache_root()
    train_sha = cache.sha256_of(data_path("train.txt"))
    key = cache.key_digest(BUILDER_VERSION, train_sha, backend.version)
    # The key is a folder, not part of the name: baselines are named after the model file.
    final = root / "demo" / key[:16] / "quantcheck-demo-f32.gguf"

    def build(tmp: Path) -> None:
        report = build_demo_model(tmp, backend, options, log)
        record = {"seconds": report.seconds, "train_tokens": report.train_tokens,
                  "train_nll": report.train_nll, "backend": backend.version}
        cache.write_atomic(final.with_name(final.name + ".json"), json.dumps(record).encode())

    def valid(path: Path) -> bool:
        return path.with_name(path.name + ".json").exists() and path.stat().st_size > 0

    cache.publish(final, build, valid)
    return final
