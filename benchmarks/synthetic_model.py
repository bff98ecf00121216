"""A larger llama-architecture GGUF with random weights, for timing only.

    python benchmarks/synthetic_model.py OUT.gguf [--embd 512] [--layers 8] [--ff 1536]

The demo model is so small that process start-up weighs in every timing; this one (about 28M
parameters with the defaults, F16) makes decoding dominate, as it does for real models. It reuses
the demo model's vocabulary, so any text tokenizes; its perplexity is meaningless.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pytest_quantcheck.demo.model import data_path, llama_metadata
from pytest_quantcheck.demo.vocab import learn_vocab
from pytest_quantcheck.gguf_file import write_gguf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--embd", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ff", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=8)
    args = parser.parse_args()
    vocab = learn_vocab(data_path("train.txt").read_text(encoding="utf-8"), 1024)
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
    tensors["output.weight"] = w(v, e)
    write_gguf(args.out, meta, tensors)
    n = sum(t.size for t in tensors.values())
    print(f"{args.out}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
