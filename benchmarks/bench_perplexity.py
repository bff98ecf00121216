"""Perplexity: our time and peak memory next to a plain llama-cpp-python loop and llama.cpp's own
``llama-perplexity``, for two text lengths, measured side by side in one run.

    python benchmarks/bench_perplexity.py [--model M.gguf] [--text T.txt] [-c 256] [-t 2] [-r 3]

Each tool runs as its own process (so peak RSS is its own), in rotation, ``-r`` times; the table
shows medians. ``llama-perplexity`` is looked up in ``$QUANTCHECK_LLAMA_TOOLS/bin``, the cache
(``benchmarks/build_llama_tools.sh`` builds it from the llama.cpp that llama-cpp-python vendors),
then ``PATH``; without it that column is skipped. The long text is the short one four times over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def naive_worker(model: str, text_path: str, n_ctx: int, threads: int) -> None:
    """The loop a user would write with llama-cpp-python's high-level API, one chunk at a time."""
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                n_threads=threads, n_threads_batch=threads)
    text = Path(text_path).read_bytes()
    text = text[:-1] if text.endswith(b"\n") else text
    tokens = llm.tokenize(text, add_bos=True, special=False)
    nll: list[float] = []
    for c in range(len(tokens) // n_ctx):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        llm.reset()
        llm.eval([llm.token_bos(), *chunk[1:]])
        scores = np.asarray(llm.scores[:n_ctx], dtype=np.float32)[n_ctx // 2 : n_ctx - 1]
        m = scores.max(axis=1, keepdims=True)
        lse = np.log(np.exp(scores - m).sum(axis=1, dtype=np.float64))
        targets = np.asarray(chunk[n_ctx // 2 + 1 :])
        nll.extend((lse - (scores[np.arange(len(targets)), targets] - m[:, 0])).tolist())
    print(f"PPL = {math.exp(sum(nll) / len(nll)):.4f}")


def find_llama_perplexity() -> Path | None:
    candidates = []
    if os.environ.get("QUANTCHECK_LLAMA_TOOLS"):
        candidates.append(Path(os.environ["QUANTCHECK_LLAMA_TOOLS"]) / "bin")
    from pytest_quantcheck.cache import cache_root

    candidates.append(cache_root() / "llama-tools" / "bin")
    for folder in candidates:
        if (folder / "llama-perplexity").exists():
            return folder / "llama-perplexity"
    found = shutil.which("llama-perplexity")
    return Path(found) if found else None


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB, and output of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{out[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def ppl_of(tool: str, out: str) -> float:
    if tool == "quantcheck":
        return float(json.loads(out)["ppl"])
    match = re.search(r"PPL = ([0-9.]+)", out)
    if not match:
        raise SystemExit(f"{tool}: no PPL in its output:\n{out[-2000:]}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--text", type=Path)
    parser.add_argument("-c", "--ctx-size", type=int, default=256)
    parser.add_argument("-b", "--batch-size", type=int, default=2048)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--naive-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_worker:
        model, text, n_ctx, threads = args.naive_worker
        naive_worker(model, text, int(n_ctx), int(threads))
        return 0

    from pytest_quantcheck.backends import physical_cores
    from pytest_quantcheck.demo.model import data_path, demo_model_path

    threads = args.threads or physical_cores()
    model = args.model or demo_model_path()
    short = args.text or data_path("eval.txt")
    tmp = Path(tempfile.mkdtemp(prefix="qc-bench-"))
    long = tmp / "long.txt"
    long.write_bytes(short.read_bytes() * 4)
    llama_ppl = find_llama_perplexity()
    quantcheck = [sys.executable, "-m", "pytest_quantcheck.cli"]

    print(f"model {model}\nthreads {threads}, n_ctx {args.ctx_size}, n_batch {args.batch_size},"
          f" {args.repetitions} repetitions, medians")
    if llama_ppl is None:
        print("llama-perplexity not found: run benchmarks/build_llama_tools.sh to compare with it")
    header = f"{'text':6} {'tool':18} {'PPL':>10} {'seconds':>8} {'peak MiB':>9} {'time / llama':>13}"
    print(header)
    for label, text in (("short", short), ("long", long)):
        common = [str(model), "-f", str(text), "-c", str(args.ctx_size), "-t", str(threads)]
        tools: dict[str, list[str]] = {
            "quantcheck": [*quantcheck, "perplexity", *common, "-b", str(args.batch_size), "--json"],
            "llama-cpp-python": [sys.executable, __file__, "--naive-worker", str(model), str(text),
                                 str(args.ctx_size), str(threads)],
        }
        if llama_ppl is not None:
            tools["llama-perplexity"] = [str(llama_ppl), "-m", *common, "-b", str(args.batch_size)]
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
        for _ in range(args.repetitions):
            for name, cmd in tools.items():
                seconds, rss, out = measure(cmd)
                runs[name].append((seconds, rss, ppl_of(name, out)))
        base = statistics.median(r[0] for r in runs["llama-perplexity"]) if llama_ppl else None
        for name, rows in runs.items():
            sec = statistics.median(r[0] for r in rows)
            rss = statistics.median(r[1] for r in rows)
            ratio = f"{sec / base:12.3f}x" if base else f"{'n/a':>13}"
            print(f"{label:6} {name:18} {rows[0][2]:10.4f} {sec:8.2f} {rss:9.0f} {ratio}")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
