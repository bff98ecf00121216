"""The examples run as users run them (the demo suite is what `make demo` runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUANTCHECK_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_demo_suite_passes_against_its_committed_baseline(demo_model: Path, real_cache: Path) -> None:
    result = run(["-m", "pytest", "--quant-baseline", "-p", "no:cacheprovider"],
                 ROOT / "examples" / "demo", real_cache)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "10 passed" in result.stdout
    assert "quantcheck summary" in result.stdout


def test_engine_example_report(demo_model: Path, real_cache: Path) -> None:
    result = run([str(ROOT / "examples" / "demo_report.py")], ROOT, real_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("Q8_0", "Q2_K"))]
    assert len(lines) == 2


def test_existing_suite_example(demo_model: Path, real_cache: Path) -> None:
    result = run(["-m", "pytest", "-p", "no:cacheprovider"], ROOT / "examples" / "existing_suite",
                 real_cache)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout


def test_github_actions_gate_uses_real_options(pytester: pytest.Pytester) -> None:
    import re

    import yaml

    workflow = yaml.safe_load((ROOT / "examples" / "github-actions" / "quant-gate.yml").read_text())
    steps = workflow["jobs"]["quant-gate"]["steps"]
    command = next(s["run"] for s in steps if s.get("name") == "Quality gate")
    flags = set(re.findall(r"--quant-[a-z-]+", command))
    assert flags >= {"--quant-baseline", "--quant-junit", "--quant-json"}
    help_text = pytester.runpytest("--help").stdout.str()
    for flag in flags:
        assert flag in help_text, flag
