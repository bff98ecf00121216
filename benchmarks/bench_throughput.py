"""Throughput: ``quantcheck bench`` next to ``llama-bench`` on the same model and threads,
measured side by side (alternating runs) in one process.

    python benchmarks/bench_throughput.py --model M.gguf [-t 2] [-r 5] [--rounds 3]

Each round runs llama-bench and then quantcheck bench (pp512 and tg128, ``-r`` repetitions
each); the table gives each tool's median over rounds of its mean t/s, the spread (median of the
per-run sd) and the ratio. ``llama-bench`` is found like llama-perplexity in bench_perplexity.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench_perplexity import find_llama_perplexity


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    found = find_llama_perplexity()
    if found is None:
        raise SystemExit("llama-bench not found: run benchmarks/build_llama_tools.sh first")
    llama_bench = found.with_name("llama-bench")
    common = ["-t", str(args.threads), "-r", str(args.repetitions)]
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        out = subprocess.run([str(llama_bench), "-m", str(args.model), *common, "-o", "json"],
                             capture_output=True, text=True, check=True).stdout
        for row in json.loads(out):
            test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
            runs.setdefault(("llama-bench", test), []).append((row["avg_ts"], row["stddev_ts"]))
        out = subprocess.run([sys.executable, "-m", "pytest_quantcheck.cli", "bench",
                              str(args.model), *common, "--json"],
                             capture_output=True, text=True, check=True).stdout
        for row in json.loads(out)["tests"]:
            runs.setdefault(("quantcheck", row["test"]), []).append((row["tokens_per_s"], row["sd"]))
    print(f"model {args.model}, {args.threads} threads, {args.repetitions} repetitions,"
          f" {args.rounds} rounds (medians)")
    print(f"{'test':6} {'tool':12} {'t/s':>10} {'sd':>8} {'vs llama-bench':>15}")
    for test in ("pp512", "tg128"):
        base = statistics.median(v for v, _ in runs[("llama-bench", test)])
        for tool in ("llama-bench", "quantcheck"):
            values = runs[(tool, test)]
            mean = statistics.median(v for v, _ in values)
            sd = statistics.median(s for _, s in values)
            print(f"{test:6} {tool:12} {mean:10.2f} {sd:8.2f} {mean / base - 1:+14.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
