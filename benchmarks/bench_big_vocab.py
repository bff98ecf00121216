"""Real vocabularies: quantcheck next to llama.cpp's own tools at a 262,144-token vocabulary, time
and peak RSS of perplexity, KL divergence and HellaSwag, side by side in one run.

    python benchmarks/bench_big_vocab.py [--vocab 262144] [-c 512] [--chunks 4] [-t 2] [-r 3]
        [--tasks 40] [--work DIR] [--before OTHER_CHECKOUT/src]

Builds (once, in ``--work``) a synthetic F16 model with random weights and a generated tokenizer of
``--vocab`` tokens (``benchmarks/synthetic_model.py``; nothing is downloaded) and its Q4_K_M
(``llama-quantize``), then runs, alternating the tools ``-r`` times, each as its own process:

* perplexity of the F16 model: ``llama-perplexity`` against ``quantcheck perplexity``;
* KL divergence of the Q4_K_M from the F16: llama.cpp's two runs (``--kl-divergence-base`` on
  the F16, then ``--kl-divergence`` on the Q4_K_M; times added, the larger peak) against one
  ``quantcheck kld`` run that builds its stored reference (a fresh cache each time; only the
  models' SHA-256, which a user's first run computes once, is kept);
* HellaSwag on the demo's task file: ``llama-perplexity --hellaswag`` against
  ``quantcheck hellaswag``.

The table shows medians with the spread (min-max) of each tool, the ratio of medians, and checks
the values: PPL's relative difference, answers equal task by task, and KLD next to
llama.cpp's (which stores its base as 16-bit values) with our tail's bound. The llama.cpp tools
come from ``$QUANTCHECK_LLAMA_TOOLS/bin``, the cache, or ``PATH``
(``benchmarks/build_llama_tools.sh`` builds them from the sources llama-cpp-python vendors).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench_perplexity import find_llama_perplexity, measure
from bench_tasks import llama_answers

from pytest_quantcheck import cache
from pytest_quantcheck.demo.model import data_path
from pytest_quantcheck.demo.task_sets import task_path

HERE = Path(__file__).parent
Run = tuple[float, float, str]  # seconds, peak MiB, output


def build_models(work: Path, vocab: int, logit_scale: float, tools: Path) -> tuple[Path, Path]:
    f16 = work / f"synthetic-{vocab}-f16.gguf"
    q4 = work / f"synthetic-{vocab}-q4_k_m.gguf"
    if not f16.exists():
        subprocess.run([sys.executable, str(HERE / "synthetic_model.py"), str(f16), "--vocab",
                        str(vocab), "--logit-scale", str(logit_scale)], check=True)
    if not q4.exists():
        subprocess.run([str(tools / "llama-quantize"), str(f16), str(q4), "Q4_K_M"], check=True,
                       capture_output=True)
    return f16, q4


def grab(pattern: str, out: str, tool: str) -> float:
    match = re.search(pattern, out)
    if not match:
        raise SystemExit(f"{tool}: {pattern!r} not in its output:\n{out[-3000:]}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--logit-scale", type=float, default=6.0,
                        help="output layer scale of the synthetic model (synthetic_model.py)")
    parser.add_argument("-c", "--ctx-size", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=40, help="HellaSwag tasks")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qc-big-vocab")
    parser.add_argument("--only", choices=["ppl", "kld", "hellaswag"], action="append")
    parser.add_argument("--before", type=Path, default=None, metavar="SRC",
                        help="also run the quantcheck whose package is in SRC (e.g. another"
                             " checkout's src/), as a third column: before and after in one run")
    args = parser.parse_args()
    llama_ppl = find_llama_perplexity()
    if llama_ppl is None:
        print("llama-perplexity not found: run benchmarks/build_llama_tools.sh first")
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    f16, q4 = build_models(args.work, args.vocab, args.logit_scale, llama_ppl.parent)
    text = data_path("eval.txt")
    hellaswag = task_path("hellaswag.txt")
    qc_cache = args.work / "qc-cache"
    for model in (f16, q4):  # a user's first run hashes each model once; later runs do not
        cache.file_sha256(model, root=qc_cache)
    env = {"QUANTCHECK_CACHE_DIR": str(qc_cache)}
    base_file = args.work / "llama-kld-base.bin"
    common = ["-c", str(args.ctx_size), "-t", str(args.threads)]
    ppl_args = ["-f", str(text), *common, "--chunks", str(args.chunks)]
    qc = [sys.executable, "-m", "pytest_quantcheck.cli"]

    def llama(model: Path, *extra: str) -> Run:
        return measure([str(llama_ppl), "-m", str(model), *extra])

    def ours(*cmd: str, src: Path | None = None) -> Run:
        for sub in ("reference", "results"):  # every KLD run builds its reference anew
            shutil.rmtree(qc_cache / sub, ignore_errors=True)
        path = {"PYTHONPATH": str(src)} if src else {}
        return measure(["env", *(f"{k}={v}" for k, v in {**env, **path}.items()), *qc, *cmd])

    def llama_kld() -> Run:
        base = llama(f16, *ppl_args, "-b", "2048", "--kl-divergence-base", str(base_file))
        run = llama(q4, *ppl_args, "-b", "2048", "--kl-divergence-base", str(base_file),
                    "--kl-divergence")
        return base[0] + run[0], max(base[1], run[1]), run[2]

    def our_jobs(src: Path | None) -> dict[str, Callable[[], Run]]:
        return {
            "ppl": lambda: ours("perplexity", str(f16), *ppl_args, "--no-cache", "--json",
                                src=src),
            "kld": lambda: ours("kld", str(f16), str(q4), *ppl_args, "--json", src=src),
            "hellaswag": lambda: ours("hellaswag", str(f16), "-f", str(hellaswag), "--tasks",
                                      str(args.tasks), *common, "--json", src=src),
        }

    jobs: dict[str, dict[str, Callable[[], Run]]] = {"llama.cpp": {
        "ppl": lambda: llama(f16, *ppl_args, "-b", "2048"),
        "kld": llama_kld,
        "hellaswag": lambda: llama(f16, "-f", str(hellaswag), "--hellaswag", "--hellaswag-tasks",
                                   str(args.tasks), *common),
    }, "quantcheck": our_jobs(None)}
    if args.before:
        jobs["before"] = our_jobs(args.before.resolve())
    names = args.only or ["ppl", "kld", "hellaswag"]
    tools = list(jobs)
    runs: dict[str, dict[str, list[Run]]] = {n: {t: [] for t in tools} for n in names}
    for rep in range(args.repetitions):
        for name in names:
            for tool in tools if rep % 2 == 0 else tools[::-1]:  # alternate who goes first
                runs[name][tool].append(jobs[tool][name]())
                print(f"# {name} {tool} rep {rep + 1}: {runs[name][tool][-1][0]:.1f} s,"
                      f" {runs[name][tool][-1][1]:.0f} MiB", file=sys.stderr)
    base_file.unlink(missing_ok=True)

    print(f"model: synthetic, {args.vocab:,} tokens, F16 {f16.stat().st_size / 2**20:.0f} MiB,"
          f" Q4_K_M {q4.stat().st_size / 2**20:.0f} MiB; n_ctx {args.ctx_size}, {args.chunks}"
          f" chunks, {args.threads} threads, HellaSwag {args.tasks} tasks;"
          f" {args.repetitions} alternating repetitions, medians (min-max)")
    before = " | quantcheck before | ratio" if args.before else ""
    print(f"| measure | llama.cpp | quantcheck | ratio{before} |")
    print(f"|---|---:|---:|---:{'|---:|---:' if args.before else ''}|")

    def spread(values: list[float], fmt: str) -> str:
        return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})")

    for name in names:
        theirs, mine = runs[name]["llama.cpp"], runs[name]["quantcheck"]
        for what, i, fmt in (("time, s", 0, ".1f"), ("peak RSS, MiB", 1, ".0f")):
            a, b = [r[i] for r in theirs], [r[i] for r in mine]
            row = (f"| {name}: {what} | {spread(a, fmt)} | {spread(b, fmt)} |"
                   f" {statistics.median(b) / statistics.median(a):.2f}x |")
            if args.before:
                c = [r[i] for r in runs[name]["before"]]
                row += f" {spread(c, fmt)} | {statistics.median(c) / statistics.median(a):.2f}x |"
            print(row)
        out_theirs, res = theirs[-1][2], json.loads(mine[-1][2])
        if name == "ppl":
            ppl = grab(r"Final estimate: PPL = ([0-9.]+)", out_theirs, "llama-perplexity")
            print(f"| {name}: value | {ppl:.4f} | {res['ppl']:.4f} |"
                  f" {res['ppl'] / ppl - 1:+.1e} |")
        elif name == "kld":
            kld = grab(r"Mean\s+KLD:\s+([0-9.]+)", out_theirs, "llama-perplexity")
            print(f"| {name}: mean KLD | {kld:.6f} (16-bit base) | {res['kld']['value']:.6f}"
                  f" (full vocabulary at most +{res.get('kld_tail_bound', float('nan')):.1e};"
                  f" tail mass {res['ref_tail_mass']:.1e}) | {res['kld']['value'] / kld - 1:+.2%} |")
        else:
            answers = llama_answers("hellaswag", out_theirs)
            same = res["correct"] == answers
            print(f"| {name}: accuracy | {100 * sum(answers) / len(answers):.2f} % |"
                  f" {100 * res['accuracy']:.2f} % | answers {'equal' if same else 'DIFFER'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
