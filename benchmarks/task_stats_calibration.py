"""False alarms of the paired task-accuracy test at the tolerance boundary, with and without the
continuity correction, measured side by side on the same simulated tables.

    python benchmarks/task_stats_calibration.py [--runs 6000] [--alpha 0.05]

Each cell draws ``runs`` paired 2x2 tables of ``n`` tasks whose true accuracy drop equals the
margin (``discordant`` of the tasks disagree); a false alarm is detect mode failing, or prove mode
passing. The corrected column is what ``accuracy_within`` uses.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import stats as sp

from pytest_quantcheck import stats

CELLS = [(400, 0.10, 0.02), (400, 0.20, 0.05), (200, 0.06, 0.02), (100, 0.10, 0.03),
         (1000, 0.03, 0.01), (60, 0.20, 0.05)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6000)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    print("| tasks | discordant | drop = margin | detect, uncorrected | detect | prove, uncorrected"
          " | prove |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(2)
    for n, discordant, drop in CELLS:
        p_lost, p_gained = (discordant + drop) / 2, (discordant - drop) / 2
        tables = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], size=args.runs)
        rates = []
        for shift in (0.0, stats._CONTINUITY):
            detect = np.mean([sp.norm.sf(stats._tango_z(int(b), int(c), n, drop, -shift))
                              < args.alpha for b, c, _ in tables])
            prove = np.mean([sp.norm.cdf(stats._tango_z(int(b), int(c), n, drop, shift))
                             < args.alpha for b, c, _ in tables])
            rates.append((detect, prove))
        se = math.sqrt(args.alpha * (1 - args.alpha) / args.runs)
        print(f"| {n} | {discordant:.0%} | {drop:.0%} | {rates[0][0]:.3f} | {rates[1][0]:.3f} |"
              f" {rates[0][1]:.3f} | {rates[1][1]:.3f} |")
    print(f"\nMonte Carlo standard error of a rate {args.alpha}: {se:.4f}")


if __name__ == "__main__":
    main()
