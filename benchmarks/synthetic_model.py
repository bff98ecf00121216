"""A larger llama-architecture GGUF with random weights, for timing only.

    python benchmarks/synthetic_model.py OUT.gguf [--embd 512] [--layers 8] [--ff 1536]
        [--vocab 262144] [--logit-scale 6]

The demo model is so small that process start-up weighs in every timing; this one (about 28M
parameters with the defaults, F16) makes decoding dominate, as it does for real models. It reuses
the demo model's vocabulary, so any text tokenizes; its perplexity is meaningless.

``--vocab N`` pads that vocabulary with generated pieces to N tokens (262,144 is Gemma 3's): the
text still tokenizes with the learned pieces, and the model's output layer, logits and softmax
have a real model's size. ``--logit-scale`` multiplies the output layer: random weights give
logits of unit spread, a near-uniform distribution no language model has; at 6 the most probable
tokens hold most of the mass and the rest fall off by tens of nats, as a trained model's do, so
the stored reference keeps a realistic number of tokens. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pytest_quantcheck.demo.model import data_path, llama_metadata
from pytest_quantcheck.demo.vocab import NORMAL, SPACE, Vocab, learn_vocab
from pytest_quantcheck.gguf_file import write_gguf


def padded(vocab: Vocab, size: int) -> Vocab:
    """``vocab`` and generated pieces up to ``size`` tokens, scored below every learned merge so
    the tokenizer reaches for them last (text tokenizes as with ``vocab`` alone)."""
    if size < len(vocab):
        raise SystemExit(f"--vocab must be at least {len(vocab)}")
    taken = set(vocab.pieces)
    extra: list[str] = []
    i = 0
    while len(extra) < size - len(vocab):
        piece = f"{SPACE}\u00b7{i:x}"  # "▁·1f": a middle dot no learned piece holds
        i += 1
        if piece not in taken:
            extra.append(piece)
    low = float(vocab.scores.min()) - 1.0
    scores = np.concatenate([vocab.scores, low - np.arange(len(extra), dtype=np.float32)])
    types = np.concatenate([vocab.types, np.full(len(extra), NORMAL, dtype=np.int32)])
    return Vocab(vocab.pieces + extra, scores.astype(np.float32), types)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--embd", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ff", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1024, help="tokens (at least 1024)")
    parser.add_argument("--logit-scale", type=float, default=1.0)
    args = parser.parse_args()
    vocab = padded(learn_vocab(data_path("train.txt").read_text(encoding="utf-8"), 1024),
                   args.vocab)
    meta = llama_metadata(vocab)
    meta.update({"general.name": "quantcheck synthetic", "general.file_type": 1,
                 "llama.embedding_length": args.embd, "llama.block_count": args.layers,
                 "llama.feed_forward_length": args.ff, "llama.attention.head_count": args.heads,
                 "llama.attention.head_count_kv": args.heads,
                 "llama.rope.dimension_count": args.embd // args.heads})
    rng = np.random.default_rng(0)

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    e, v = args.embd, len(vocab)
    tensors: dict[str, np.ndarray] = {"token_embd.weight": w(v, e)}
    for i in range(args.layers):
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(e, np.float32)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[f"blk.{i}.{name}.weight"] = w(e, e)
        tensors[f"blk.{i}.ffn_norm.weight"] = np.ones(e, np.float32)
        tensors[f"blk.{i}.ffn_gate.weight"] = w(args.ff, e)
        tensors[f"blk.{i}.ffn_up.weight"] = w(args.ff, e)
        tensors[f"blk.{i}.ffn_down.weight"] = w(e, args.ff)
    tensors["output_norm.weight"] = np.ones(e, np.float32)
    tensors["output.weight"] = (w(v, e) * np.float16(args.logit_scale)).astype(np.float16)
    write_gguf(args.out, meta, tensors)
    n = sum(t.size for t in tensors.values())
    print(f"{args.out}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
