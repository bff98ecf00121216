"""Blame's wall time next to the way it is done today: one ``llama-perplexity --kl-divergence``
job per mix (GGUF-Tool-Suite's ``benchmark_each_tensor.sh`` runs one per tensor), side by side.

    python benchmarks/bench_blame.py [--model M.gguf] [--text T.txt] [--variant Q4_0]
        [--by kind] [-c 256] [--chunks 32] [-t 2]

Ours: :func:`pytest_quantcheck.blame.blame` in an empty cache, so its time includes quantizing
every mix, decoding the base's reference once and each mix's passes; once with looks (groups stop
when their rank is clear) and once on every chunk. Theirs: ``llama-perplexity`` saving the base's
logits once (``--kl-divergence-base``), then one process per mix and one for the variant, each
loading its model and scoring every chunk. Their jobs reuse our mix files, so their column leaves
out quantizing (in their favour). Each job's own time is kept, so the per-group cost shows.
``llama-perplexity`` is looked up as ``bench_perplexity.py`` does ($QUANTCHECK_LLAMA_TOOLS/bin,
the cache, PATH), plus /work/llama-tools/bin; without it only our column is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_perplexity import find_llama_perplexity, measure

from pytest_quantcheck.backends import RunOptions, default_backend
from pytest_quantcheck.blame import blame
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol


def _their_kld(out: str) -> float:
    m = re.search(r"Mean\s+KLD:\s+(-?[0-9.]+)", out)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="base GGUF (default: the demo)")
    parser.add_argument("--text", type=Path, default=None)
    parser.add_argument("--variant", default="Q4_0")
    parser.add_argument("--by", default="kind")
    parser.add_argument("-c", "--ctx-size", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    from pytest_quantcheck.demo.model import data_path, demo_model_path

    options = RunOptions(n_threads=args.threads)
    model = args.model or demo_model_path(options=options)
    text = args.text or data_path("eval.txt")
    proto = ScoringProtocol(n_ctx=args.ctx_size, n_batch=2048, n_chunks=args.chunks)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for label, sequential in (("blame, looks", True), ("blame, every chunk", False)):
            engine = Engine(default_backend(), options, cache_dir=root / label.replace(" ", "_"))
            t0 = time.perf_counter()
            result = blame(model, args.variant, text, proto, by=args.by, engine=engine,
                           sequential=sequential)
            rows.append((label, time.perf_counter() - t0, result))
        print(f"model {model.name}, variant {args.variant}, by {args.by},"
              f" {result.n_chunks} chunks of {args.ctx_size}, {args.threads} threads,"
              f" {len(result.groups)} groups")
        for label, seconds, r in rows:
            print(f"{label:<22} {seconds:8.1f} s  ({r.passes} passes, {r.chunks_decoded} chunks"
                  f" decoded; variant KLD {r.variant_kld.value:.6f}; top: {r.groups[0].group.name}"
                  f" {100 * r.groups[0].share.value:.1f} %)")
        tool = find_llama_perplexity() or (
            Path("/work/llama-tools/bin/llama-perplexity")
            if Path("/work/llama-tools/bin/llama-perplexity").exists() else None)
        if tool is None:
            print("llama-perplexity not found: build it with benchmarks/build_llama_tools.sh")
            return
        mixes = sorted((root / "blame,_every_chunk" / "variants").glob("*-only-*.gguf")) + sorted(
            (root / "blame,_every_chunk" / "variants").glob("*-restored-*.gguf"))
        variant = next(p for p in (root / "blame,_every_chunk" / "variants").glob("*.gguf")
                       if p not in mixes)
        common = ["-f", str(text), "-c", str(args.ctx_size), "-b", "2048", "--chunks",
                  str(args.chunks), "-t", str(args.threads)]
        base_logits = root / "base.kld"
        env_seconds = []
        seconds, _rss, _out = measure([str(tool), "-m", str(model), *common,
                                       "--kl-divergence-base", str(base_logits)])
        env_seconds.append(("base logits", seconds, float("nan")))
        for path in [variant, *mixes]:
            seconds, _rss, out = measure([str(tool), "-m", str(path), *common,
                                          "--kl-divergence-base", str(base_logits),
                                          "--kl-divergence"])
            env_seconds.append((path.stem, seconds, _their_kld(out)))
        total = sum(s for _n, s, _k in env_seconds)
        print(f"{'llama-perplexity jobs':<22} {total:8.1f} s  ({len(env_seconds)} processes:"
              f" base logits, the variant, {len(mixes)} mixes; quantizing not counted)")
        print(f"  per job: median {sorted(s for _n, s, _k in env_seconds)[len(env_seconds) // 2]:.1f}"
              f" s; variant KLD {env_seconds[1][2]:.6f} by llama-perplexity")
        if os.environ.get("BENCH_VERBOSE"):
            for name, seconds, kld in env_seconds:
                print(f"    {name:<60} {seconds:6.1f} s  KLD {kld:.6f}")


if __name__ == "__main__":
    main()
