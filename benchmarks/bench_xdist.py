"""Wall time of one quality suite run serially, with ``-n 2`` and with ``-n 2`` plus Holm, side
by side, and whether the three give the same verdicts.

    python benchmarks/bench_xdist.py [--model M.gguf] [--text T.txt] [--rounds 3] [-c 256]

The suite is the run-architecture issue's: six variants, each with a perplexity and two KL
markers. Every configuration runs once unmeasured (quantizing the variants and writing the
reference log-probabilities, both cached), then ``--rounds`` times in rotation; medians are
printed with their ratio to the serial median. Each run is a fresh ``pytest`` process in a
temporary project, as a user's CI would start it. Default model: the built-in demo model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=10)
@pytest.mark.kl_divergence_at_most(0.3)
@pytest.mark.top1_agreement_at_least(0.5)
def test_quality(quant_model):
    pass
"""
HOLM = ["--quant-correction", "holm"]
WAYS = {
    "serial": [],
    "-n 2": ["-n", "2"],
    "serial holm": HOLM,
    "-n 2 holm": ["-n", "2", *HOLM],
}


def run(project: Path, extra: list[str]) -> tuple[float, dict[tuple[str, str], str]]:
    report = project / "report.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--quant-json={report}", *extra], cwd=project, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    checks = json.loads(report.read_text())["checks"]
    return seconds, {(c["variant"], c["check"]): c["verdict"] for c in checks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-c", "--n-ctx", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        keys = [f"variants = {json.dumps(VARIANTS)}", f"n_ctx = {args.n_ctx}"]
        if args.model:
            keys.append(f'model = "{args.model.resolve()}"')
        if args.text:
            keys.append(f'eval_text = "{args.text.resolve()}"')
        (project / "pyproject.toml").write_text("[tool.quantcheck]\n" + "\n".join(keys) + "\n")
        (project / "test_suite.py").write_text(SUITE)
        verdicts = {}
        for way, extra in WAYS.items():  # warm-up: variants and reference log-probs cached
            verdicts[way] = run(project, extra)[1]
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for r in range(args.rounds):
            order = list(WAYS)[r % len(WAYS):] + list(WAYS)[:r % len(WAYS)]
            for way in order:
                seconds, found = run(project, WAYS[way])
                times[way].append(seconds)
                if found != verdicts[way]:
                    sys.exit(f"{way}: verdicts changed between runs")
    serial = statistics.median(times["serial"])
    print(f"{len(VARIANTS)} variants x 3 checks, {args.rounds} rounds, medians:")
    print("| run | seconds | / serial | verdicts as serial (with the same correction) |")
    print("|---|---|---|---|")
    for way in WAYS:
        median = statistics.median(times[way])
        same = verdicts[way] == verdicts["serial holm" if "holm" in way else "serial"]
        print(f"| {way} | {median:.2f} | {median / serial:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
