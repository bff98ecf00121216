"""A real-model suite decided fixed-length, sequentially, and again from the result cache, side
by side in one run: chunks decoded, verdicts, and time.

    python benchmarks/bench_sequential.py [--model M.gguf] [--text T.txt] [-c 256]
                                          [--variants Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q2_K]
                                          [--hellaswag H.txt]

Each run is a fresh pytest process over the same project (``perplexity_within(pct=3)`` and
``kl_divergence_at_most(0.1)`` on every variant, and ``accuracy_within(points=5)`` and
``flips_at_most(fraction=0.3)`` on the demo's HellaSwag tasks) with one cache folder: the quantized variants
are built by the first run and reused; the per-chunk results and the reference's
log-probabilities are removed before the fixed and the first sequential run. The last run
appends a line to the text: every model must be decoded again. Defaults: the built-in demo
model and its held-out text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=3)
@pytest.mark.kl_divergence_at_most(0.1)
def test_gate(quant_model):
    pass


@pytest.mark.accuracy_within("hellaswag", points=5)
@pytest.mark.flips_at_most("hellaswag", fraction=0.3)
def test_tasks(quant_model):
    pass
"""


def run(project: Path, cache: Path, *flags: str) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "QUANTCHECK_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "--quant-json", "report.json", *flags], cwd=project, env=env,
                   capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    return seconds, json.loads((project / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--text", type=Path, default=None)
    parser.add_argument("-c", "--ctx-size", type=int, default=256)
    parser.add_argument("--variants", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q2_K")
    parser.add_argument("--hellaswag", type=Path, default=None,
                        help="HellaSwag task file (default: the demo's)")
    args = parser.parse_args()
    if args.hellaswag is None:
        from pytest_quantcheck.demo.task_sets import task_path

        args.hellaswag = task_path("hellaswag.txt")
    if args.model is None:
        from pytest_quantcheck.demo.model import data_path, demo_model_path

        args.model, args.text = demo_model_path(), args.text or data_path("eval.txt")
    work = Path(tempfile.mkdtemp(prefix="bench-sequential-"))
    project, cache = work / "project", work / "cache"
    project.mkdir()
    text = project / "eval.txt"
    shutil.copyfile(args.text, text)
    variants = ", ".join(f'"{v}"' for v in args.variants.split(","))
    (project / "pyproject.toml").write_text(
        f'[tool.quantcheck]\nmodel = "{args.model}"\neval_text = "eval.txt"\n'
        f"variants = [{variants}]\nn_ctx = {args.ctx_size}\n"
        f'[tool.quantcheck.tasks]\nhellaswag = "{args.hellaswag.resolve()}"\n')
    (project / "test_suite.py").write_text(SUITE)
    rows = []
    for label, flags, fresh in (("fixed length, no result cache",
                                 ("--quant-sequential", "false", "--quant-result-cache", "false"),
                                 True),
                                ("sequential, empty result cache", (), True),
                                ("sequential, second identical run", (), False),
                                ("sequential, text changed by one line", (), False)):
        if fresh:  # per-chunk results and the reference's log-probabilities computed anew
            shutil.rmtree(cache / "results", ignore_errors=True)
            shutil.rmtree(cache / "reference", ignore_errors=True)
        if label.endswith("one line"):
            with text.open("a") as f:
                f.write("One more line changes every chunk's tokens hash.\n")
        seconds, data = run(project, cache, *flags)
        models = data["models"]
        verdicts = {(c["variant"], c["check"]): c["verdict"] for c in data["checks"]}
        rows.append((label, seconds, models, verdicts))
    fixed_verdicts = rows[0][3]
    print("| run | seconds | chunks decoded (per model) | tasks answered | verdicts as fixed |")
    print("|---|---:|---|---:|---|")
    for label, seconds, models, verdicts in rows:
        decoded = sum(int(m["chunks_decoded"]) for m in models.values())
        per = ", ".join(f"{name} {m['chunks_decoded']}" for name, m in sorted(models.items()))
        answered = sum(int(m["tasks_scored"]) + int(m["tasks_from_cache"])
                       for m in models.values())
        print(f"| {label} | {seconds:.1f} | {decoded} ({per}) | {answered} |"
              f" {'yes' if verdicts == fixed_verdicts else 'NO'} |")
    first, second = rows[1][1], rows[2][1]
    fixed_chunks = sum(int(m["chunks_decoded"]) for m in rows[0][2].values())
    seq_chunks = sum(int(m["chunks_decoded"]) for m in rows[1][2].values())
    print(f"\nsequential / fixed chunks decoded: {seq_chunks / fixed_chunks:.2f};"
          f" second run / first sequential run time: {second / first:.2f};"
          f" second run / fixed-length run time: {second / rows[0][1]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
