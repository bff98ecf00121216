"""Calibration of the perplexity gate: false alarms of same-model comparisons and power.

    python benchmarks/stats_calibration.py [--trials 2000]

The gate decides on per-chunk differences of mean NLL (a paired one-sided t-test). Simulated
chunks have a per-chunk log-ratio spread ``sd`` like real quantizations (measured on the demo
model: Q8_0 0.003, Q6_K 0.014, Q4_K_M 0.10; for large models' good quants it is typically 0.005
to 0.02). Prints the A/A false-alarm rate (tolerance 0, same model twice) and, for a true
perplexity increase against a 0% tolerance (``detect``), how often it is caught.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from pytest_quantcheck import stats


def rate(rng: np.random.Generator, trials: int, chunks: int, sd: float, increase: float,
         alpha: float) -> float:
    fails = 0
    for _ in range(trials):
        d = rng.normal(math.log1p(increase), sd, chunks)
        fails += stats.mean_at_most(d, 0.0, alpha, "detect", "x").verdict == stats.FAIL
    return fails / trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"alpha {args.alpha}, {args.trials} simulated comparisons per cell")
    print("false alarms, same model twice (A/A):")
    for chunks in (8, 32, 128):
        print(f"  {chunks:4d} chunks: {rate(rng, args.trials, chunks, 0.01, 0.0, args.alpha):.3f}")
    print("power: fraction of runs that fail a 0% tolerance, by true PPL increase")
    increases = (0.0025, 0.005, 0.01, 0.02)
    print("  sd     chunks " + " ".join(f"{f'+{100 * i:g}%':>7}" for i in increases))
    for sd in (0.005, 0.01, 0.02):
        for chunks in (16, 32, 64, 128):
            cells = " ".join(f"{rate(rng, args.trials // 4, chunks, sd, i, args.alpha):7.2f}"
                             for i in increases)
            print(f"  {sd:<6} {chunks:6d} {cells}")


if __name__ == "__main__":
    main()
