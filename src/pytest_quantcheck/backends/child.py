"""The child processes the parent runs llama.cpp in, where a crash or the memory it takes must not
touch the parent: this module is their only ``__main__``, one subcommand each.

    python -m pytest_quantcheck.backends.child probe PATH
    python -m pytest_quantcheck.backends.child memory PATH THREADS LAYERS N_CTX N_SEQ N_BATCH

The parent side of each (launching the child, reading its exit status or its JSON) is in
:mod:`~pytest_quantcheck.backends.probe` and :mod:`~pytest_quantcheck.backends.memory`, which
import nothing of llama.cpp; this module is the one of the three that does, so that
:mod:`~pytest_quantcheck.backends.llamacpp` can import them without a cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pytest_quantcheck import gpu
from pytest_quantcheck.backends import BackendError, RunOptions
from pytest_quantcheck.backends.llamacpp import LoadedLlamaCpp
from pytest_quantcheck.metrics.memory import reset_peak, resident


def probe(path: Path) -> int:
    """Exit status 0 when llama.cpp loads ``path`` and decodes with it, 1 when it refuses the
    file cleanly; a crash is the signal the parent sees."""
    # Some files load and then abort llama.cpp at context creation or the first decode (a
    # weight type with no CPU kernel, a bad norm epsilon): decode a few tokens too.
    try:
        model = LoadedLlamaCpp(path, RunOptions(n_threads=1))
        ctx = model.open_context(8, 1, 8)
        ctx.score_chunks(np.zeros((1, 8), dtype=np.int32) + min(1, model.n_vocab - 1), 4)
        ctx.close()
        model.close()
    except (BackendError, ValueError):
        return 1
    return 0


def memory(path: Path, threads: int, layers: int, n_ctx: int, n_seq: int, n_batch: int) -> int:
    """Load ``path``, decode one batch of the scoring protocol's shape, and print the memory it
    took as one line of JSON; a refusal is one line on stderr and exit status 1."""
    before_gpu = gpu.query()
    reset_peak()
    rss_before, _ = resident()
    try:
        model = LoadedLlamaCpp(path, RunOptions(n_threads=threads, n_gpu_layers=layers))
        ctx = model.open_context(n_ctx, n_seq, n_batch)
        tokens = np.random.default_rng(0).integers(0, model.n_vocab, size=(n_seq, n_ctx))
        ctx.score_chunks(tokens.astype(np.int32), n_ctx // 2)
        at_peak = gpu.query(os.getpid())
        ctx.close()
        model.close()
    except (BackendError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    _, rss_peak = resident()
    print(json.dumps({
        "rss_before": rss_before, "rss_peak": rss_peak, "gpu_used_before": before_gpu.used_bytes(),
        "gpu": {"devices": [d.__dict__ for d in at_peak.devices],
                "process_bytes": at_peak.process_bytes, "note": at_peak.note},
    }))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_quantcheck.backends.child")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="load a model file and decode a few tokens")
    p.add_argument("path", type=Path)
    m = sub.add_parser("memory", help="print the memory of load plus one batch as JSON")
    m.add_argument("path", type=Path)
    for name in ("threads", "layers", "n_ctx", "n_seq", "n_batch"):
        m.add_argument(name, type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "probe":
        return probe(args.path)
    return memory(args.path, args.threads, args.layers, args.n_ctx, args.n_seq, args.n_batch)


if __name__ == "__main__":
    sys.exit(main())
