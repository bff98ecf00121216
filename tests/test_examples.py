"""The examples run as users run them (the demo suite is what `make demo` runs)."""

from __future__ import annotations

import os
import shutil
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
    assert "18 passed" in result.stdout
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


def test_imatrix_example(demo_model: Path, real_cache: Path) -> None:
    result = run(["-m", "pytest", "-p", "no:cacheprovider"], ROOT / "examples" / "imatrix", real_cache)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout


def test_imatrix_example_fails_an_imatrix_that_hurts(demo_model: Path, real_cache: Path) -> None:
    # On the demo model the imatrix raises Q4_K_M's mean KLD by 0.0044 (paired t = 11.5 over
    # 48 chunks) while its perplexity does not move significantly: the gate must say so.
    result = run(["-m", "pytest", "-p", "no:cacheprovider", "-k", "no_worse", "--quant-variants",
                  "Q4_K_M", "--quant-chunks", "16"], ROOT / "examples" / "imatrix", real_cache)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 failed" in result.stdout
    assert "mean KLD of Q4_K_M exceeds Q4_K_M-no-imatrix's by" in result.stdout


def test_committed_imatrix_fits_the_demo_model(demo_model: Path) -> None:
    import numpy as np

    from pytest_quantcheck.gguf_file import read_gguf
    from pytest_quantcheck.imatrix import load_imatrix

    path = ROOT / "examples" / "imatrix" / "demo.imatrix.gguf"
    meta = read_gguf(path).metadata
    # computed on the training text (scripts/make_demo_imatrix.py), never on the evaluation text
    assert meta["imatrix.datasets"] == ["src/pytest_quantcheck/demo/data/train.txt"]
    tensors = read_gguf(demo_model).tensors
    matrices = {name for name, t in tensors.items() if name.startswith("blk.") and len(t.shape) == 2}
    weights = load_imatrix(path)
    assert set(weights) == matrices
    for name, values in weights.items():
        assert values.size == tensors[name].shape[0], name  # one weight per input column
        assert np.all(values >= 0) and values.max() > 0, name  # unused inputs (zero) are allowed


def test_custom_variants_example(demo_model: Path, real_cache: Path, tmp_path: Path) -> None:
    project = tmp_path / "custom_variants"  # a copy: its conftest writes build/ next to itself
    shutil.copytree(ROOT / "examples" / "custom_variants", project,
                    ignore=shutil.ignore_patterns("build", "__pycache__"))
    result = run(["-m", "pytest", "-p", "no:cacheprovider"], project, real_cache)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout
    assert (project / "build" / "Q3_K_M-q8-embed.gguf").is_file()
    summary = result.stdout.split("quantcheck summary")[1]
    # 3 marker checks a variant, and the candidate's 4 assertion helper calls
    assert summary.count("Q3_K_M-q8-embed ") == 7 and summary.count("Q4_K_M ") == 3
