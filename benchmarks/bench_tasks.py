"""Task accuracy: ``quantcheck hellaswag / winogrande / multiple-choice`` next to llama.cpp's
``llama-perplexity --hellaswag / --winogrande / --multiple-choice`` on the same file and model,
side by side in one run: equal answers task by task, equal accuracy, and the time ratio.

    python benchmarks/bench_tasks.py [--model M.gguf ...] [-t 2] [-r 3] [--tasks N]

Models default to the built-in demo model; task files to the demo's three. Each tool runs as its
own process, in rotation, ``-r`` times; times are whole-process medians (start-up included, as a
user waits for it). llama-perplexity's per-task answers come from its running accuracy lines
(HellaSwag, multiple choice) and its per-task result column (Winogrande).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_perplexity import find_llama_perplexity

from pytest_quantcheck.demo.task_sets import FILES, task_path
from pytest_quantcheck.tasks.files import load

FLAGS = {"hellaswag": ("-f", "--hellaswag"), "winogrande": ("-f", "--winogrande"),
         "multiple-choice": ("-bf", "--multiple-choice")}


def llama_answers(mode: str, output: str) -> list[bool]:
    """Per-task correctness from llama-perplexity's log."""
    if mode == "winogrande":
        rows = re.findall(r"^\d+\t[\d.]+\t\s*\S+\s+\S+\s+(\d)\s+(\d)\s*$", output, re.M)
        return [result == answer for result, answer in rows]
    running = re.findall(r"^(\d+)\t([\d.]+)%?(?:\t.*)?$", output, re.M)
    correct, answers = 0, []
    for i, acc in running:
        now = round(float(acc) * int(i) / 100)
        answers.append(now > correct)
        correct = now
    return answers


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", default=None)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("-c", "--ctx-size", type=int, default=512)
    parser.add_argument("--tasks", type=int, default=None,
                        help="task limit for every mode (default: each tool's default)")
    args = parser.parse_args()
    tool = find_llama_perplexity()
    if tool is None:
        print("llama-perplexity not found; build it with benchmarks/build_llama_tools.sh")
        return 1
    if args.model is None:
        from pytest_quantcheck.demo.model import demo_model_path

        args.model = [demo_model_path()]
    print("| model | mode | tasks | llama-perplexity | quantcheck | answers equal | time ratio |")
    print("|---|---|---:|---:|---:|---|---:|")
    ok = True
    for model in args.model:
        for name in FILES:
            path = task_path(name)
            mode = load(path).mode
            flag, switch = FLAGS[mode]
            ours = [sys.executable, "-m", "pytest_quantcheck.cli", mode, str(model), "-f",
                    str(path), "-c", str(args.ctx_size), "-t", str(args.threads), "--json"]
            theirs = [str(tool), "-m", str(model), flag, str(path), switch, "-c",
                      str(args.ctx_size), "-t", str(args.threads)]
            if args.tasks is not None:
                ours += ["--tasks", str(args.tasks)]
                theirs += [f"--{mode}-tasks", str(args.tasks)]
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            for _ in range(args.rounds):
                seconds, out = timed(theirs)
                times["theirs"].append(seconds)
                expected = llama_answers(mode, out)
                seconds, out = timed(ours)
                times["ours"].append(seconds)
                result = json.loads(out)
            same = result["correct"] == expected
            ok &= same
            acc_theirs = sum(expected) / max(1, len(expected))
            ratio = statistics.median(times["ours"]) / statistics.median(times["theirs"])
            print(f"| {model.name} | {mode} | {result['n_tasks']} | {100 * acc_theirs:.4f} %"
                  f" ({statistics.median(times['theirs']):.2f} s) | {100 * result['accuracy']:.4f} %"
                  f" ({statistics.median(times['ours']):.2f} s) | {'yes' if same else 'NO'} |"
                  f" {ratio:.2f}x |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
