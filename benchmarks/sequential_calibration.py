"""Sequential against fixed-length decisions, simulated side by side on the same data: false
alarms at the tolerance boundary, power, and the chunks each needs.

    python benchmarks/sequential_calibration.py [--runs 2000] [--chunks 128] [--min-chunks 8]

Per-chunk paired log-ratio differences are drawn normal with the given spread (sd 0.003 is the
demo's Q8_0, 0.014 its Q6_K, 0.10 its Q4_K_M); the check is ``perplexity_within(pct=3)``.
"False alarms" rows have the true increase at the tolerance (3 %): detect failing, prove
passing. The sequential column runs ``pytest_quantcheck.sequential.decide``, the plugin's own
procedure, over the looks ``look_schedule`` gives.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from pytest_quantcheck import stats
from pytest_quantcheck.sequential import decide, look_alphas, look_schedule

PCT = 3.0


def run(diffs: np.ndarray, mode: str, looks: list[int]) -> tuple[str, int, str]:
    margin = math.log1p(PCT / 100)

    def evaluate(n: int, level: float, m: str) -> stats.Decision:
        return stats.mean_at_most(diffs[:n], margin, level, m, "chunk differences")

    outcome, i = decide(looks, look_alphas(looks, 0.05), mode, evaluate)
    fixed = stats.mean_at_most(diffs, margin, 0.05, mode, "chunk differences").verdict
    return outcome.verdict, looks[i], fixed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--min-chunks", type=int, default=8)
    args = parser.parse_args()
    looks = look_schedule(args.chunks, args.min_chunks)
    print(f"looks at {looks} chunks, levels {[round(a, 4) for a in look_alphas(looks, 0.05)]}\n")
    print("| true increase | sd | mode | rate, fixed | rate, sequential | mean chunks, sequential"
          " | same verdict |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(11)
    cells = [(PCT, 0.02, "detect"), (PCT, 0.10, "detect"), (PCT, 0.02, "prove"),
             (PCT, 0.10, "prove"), (0.0, 0.003, "prove"), (0.0, 0.02, "prove"),
             (1.4, 0.10, "prove"), (5.0, 0.02, "detect"), (9.0, 0.10, "detect"),
             (5.0, 0.10, "detect")]
    for pct, sd, mode in cells:
        mean = math.log1p(pct / 100)
        counted = "fail" if mode == "detect" else "pass"
        seq = fixed = same = 0
        used = []
        for _ in range(args.runs):
            verdict, n, fixed_verdict = run(rng.normal(mean, sd, args.chunks), mode, looks)
            seq += verdict == counted
            fixed += fixed_verdict == counted
            same += verdict == fixed_verdict
            used.append(n)
        print(f"| {pct:g} % | {sd:g} | {mode} ({counted}) | {fixed / args.runs:.3f} |"
              f" {seq / args.runs:.3f} | {np.mean(used):.1f} of {args.chunks} |"
              f" {same / args.runs:.1%} |")
    print(f"\nMonte Carlo standard error of a rate 0.05 over {args.runs} runs:"
          f" {math.sqrt(0.05 * 0.95 / args.runs):.4f}")


if __name__ == "__main__":
    main()
