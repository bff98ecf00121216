"""False alarms of the throughput gate: same model against itself, simulated and for real.

    python benchmarks/throughput_false_alarms.py --model M.gguf [--runs 12] [-r 5] [-t 2]
    python benchmarks/throughput_false_alarms.py --plugin [--model M.gguf] [--baseline-runs 3]
        [--runs 12]

``--plugin``: end to end, as CI uses the gate. In a temporary project (default model: the
built-in demo model, its Q4_K_M variant), ``--baseline-runs`` separate ``pytest
--quant-update-baseline`` processes record the baseline, then ``--runs`` separate ``pytest
--quant-baseline`` processes check ``throughput_at_least(pct=0)`` for pp and tg against it: every
failure is a false alarm. Then as many runs with one thread instead of two (``threads`` in
``fingerprint_ignore``, so the baseline still applies): every pass is a missed slowdown. The
failures of each are counted.

Simulation: two independent runs of ``n`` repetitions whose tokens/s scatter log-normally around
the same speed; the gate (``stats.ratio_at_least``, Mann-Whitney U or Welch by sample size) is
asked "at least 100 % of the other" and must fail no more than alpha of the time.

Real: ``--runs`` separate ``quantcheck bench`` processes on the same model, one after another,
as a CI job that records a baseline and a later job that checks against it would run. Every
ordered pair of runs (a baseline and a check) is put to the gate at several tolerances, and the
fraction that fails is printed. Repetitions of one run share that run's conditions (placement in
memory, clock, neighbours), so run-to-run drift is not in the within-run spread: the table shows
what tolerance a machine needs for the gate to stay quiet when nothing changed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pytest_quantcheck import stats

TOLERANCES = (0.0, -2.0, -5.0, -10.0)


def simulate(n: int, trials: int, alpha: float, sd: float = 0.02) -> tuple[float, str]:
    rng = np.random.default_rng(n)
    fails = 0
    test = ""
    for _ in range(trials):
        x, y = 100 * np.exp(rng.normal(0, sd, n)), 100 * np.exp(rng.normal(0, sd, n))
        d = stats.ratio_at_least(x, y, 1.0, alpha, "detect")
        fails += d.verdict == stats.FAIL
        test = d.test.split(" on ")[0]
    return fails / trials, test


def bench(model: Path, repetitions: int, threads: int) -> dict[str, np.ndarray]:
    out = subprocess.run([sys.executable, "-m", "pytest_quantcheck.cli", "bench", str(model),
                          "-r", str(repetitions), "-t", str(threads), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return {row["test"]: np.array(row["samples"]) for row in json.loads(out)["tests"]}


PLUGIN_SUITE = """
import pytest

@pytest.mark.throughput_at_least(pct=0)
@pytest.mark.throughput_at_least(pct=0, phase="pp")
def test_speed(quant_model):
    pass
"""


def pytest_run(project: Path, *args: str) -> dict[str, dict[str, object]]:
    report = project / "r.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--quant-json={report}", *args], cwd=project, capture_output=True,
                          text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    checks = json.loads(report.read_text())["checks"]
    return {("pp" if "phase='pp'" in c["check"] else "tg"): c for c in checks}


def plugin_calibration(model: Path | None, baseline_runs: int, runs: int, threads: int,
                       alpha: float, pool: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        keys = ['variants = ["Q4_K_M"]', f"threads = {threads}", f"alpha = {alpha}",
                'fingerprint_ignore = ["threads"]']
        if model is not None:
            keys.append(f'model = "{model.resolve()}"')
        (project / "pyproject.toml").write_text("[tool.quantcheck]\n" + "\n".join(keys) + "\n")
        (project / "test_speed.py").write_text(PLUGIN_SUITE)
        for _ in range(baseline_runs):
            pytest_run(project, "--quant-update-baseline", "--quant-baseline-runs",
                       str(baseline_runs))
        rows = []
        for label, extra in (("same model, same threads", ()),
                             (f"1 thread instead of {threads}", ("--quant-threads", "1"))):
            fails = {"pp": 0, "tg": 0}
            for _ in range(runs):
                found = pytest_run(project, "--quant-baseline", *extra)
                for phase, check in found.items():
                    fails[phase] += check["verdict"] == "fail"
            rows.append((label, fails))
        # The checking runs above share one baseline draw, so their failures are not
        # independent. For the rate itself: record more runs, then put every run, as the
        # check, against every triple of the others, as the baseline (runs are exchangeable).
        for _ in range(pool - baseline_runs):
            pytest_run(project, "--quant-update-baseline", "--quant-baseline-runs", str(pool))
        stored = json.loads(next((project / "baselines").glob("*.json")).read_text())
        recorded = stored["records"]["Q4_K_M"]["machines"][0]["runs"]
        pooled = []
        for phase in ("pp", "tg"):
            samples = [np.array(r["samples"]) for r in recorded[phase]]
            two_level = within = cases = pairs = 0
            for i, run in enumerate(samples):
                others = [s for j, s in enumerate(samples) if j != i]
                for triple in itertools.combinations(others, baseline_runs):
                    cases += 1
                    two_level += stats.run_ratio_at_least(run, list(triple), 1.0, alpha,
                                                          "detect").verdict == stats.FAIL
                for other in others:
                    pairs += 1
                    within += stats.ratio_at_least(run, other, 1.0, alpha,
                                                   "detect").verdict == stats.FAIL
            pooled.append((phase, len(samples), two_level / cases, cases, within / pairs, pairs))
        print(f"\nplugin, end to end: baseline of {baseline_runs} separate runs, {runs} checking"
              f" runs each, throughput_at_least(pct=0), alpha {alpha}")
        print("| runs | pp fails | tg fails |")
        print("|---|---|---|")
        for label, fails in rows:
            print(f"| {label} | {fails['pp']}/{runs} ({fails['pp'] / runs:.2f}) |"
                  f" {fails['tg']}/{runs} ({fails['tg'] / runs:.2f}) |")
        print(f"\nfalse alarms at pct=0 over {pool} recorded runs, each against every"
              f" {baseline_runs} others (two-level) or every other (within-run test):")
        print("| test | runs | two-level | within-run |")
        print("|---|---|---|---|")
        for phase, n, rate, cases, old_rate, pairs in pooled:
            print(f"| {phase} | {n} | {rate:.3f} ({cases} cases) | {old_rate:.3f} ({pairs} pairs) |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--plugin", action="store_true", help="end to end through pytest")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--pool", type=int, default=15,
                        help="--plugin: runs recorded for the pooled false-alarm rate")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--trials", type=int, default=4000)
    args = parser.parse_args()
    if args.plugin:
        plugin_calibration(args.model, args.baseline_runs, args.runs, args.threads, args.alpha,
                           args.pool)
        return 0
    if args.model is None:
        parser.error("--model is required without --plugin")

    print(f"simulated, same speed twice, tolerance 0, alpha {args.alpha}, {args.trials} trials")
    for n in (3, 5, 10):
        rate, test = simulate(n, args.trials, args.alpha)
        print(f"  {n:2d} + {n:<2d} repetitions  {test:22s} false alarms {rate:.3f}")

    runs = [bench(args.model, args.repetitions, args.threads) for _ in range(args.runs)]
    pairs = list(itertools.permutations(range(args.runs), 2))
    print(f"\nreal: {args.runs} separate runs of quantcheck bench on {args.model.name},"
          f" {args.repetitions} repetitions, {args.threads} threads; {len(pairs)} ordered pairs")
    for test in runs[0]:
        means = np.array([r[test].mean() for r in runs])
        within = np.median([r[test].std(ddof=1) / r[test].mean() for r in runs])
        drift = means.std(ddof=1) / means.mean()
        print(f"  {test}: run means {means.mean():.1f} t/s, run-to-run cv {drift:.2%},"
              f" within-run cv {within:.2%}")
        cells = []
        for pct in TOLERANCES:
            fails = sum(stats.ratio_at_least(runs[i][test], runs[j][test], 1 + pct / 100,
                                             args.alpha, "detect").verdict == stats.FAIL
                        for i, j in pairs)
            cells.append(f"pct={pct:+g}: {fails / len(pairs):.3f}")
        print("    false alarms  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
