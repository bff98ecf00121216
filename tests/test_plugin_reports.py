"""JSON, JUnit and GitHub Actions reports, and identical results under pytest-xdist."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from junitparser import JUnitXml

from conftest import XDIST_QUIET, RunBothWays

SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=3)
@pytest.mark.kl_divergence_at_most(0.05)
def test_gate(quant_model):
    pass

@pytest.mark.perplexity_within(pct=1, of="baseline")
def test_baseline(quant_model):
    pass
"""


@pytest.fixture
def subprocess_project(qc_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # the fake backend, before a PYTHONPATH already set (a worktree's sources)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent), prepend=os.pathsep)
    qc_project.makepyfile(SUITE)
    return qc_project


def test_json_and_junit_reports_carry_the_numbers(qc_project: pytest.Pytester,
                                                  run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    result = run_both_ways(qc_project, "--quant-json", "out/q.json", "--quant-junit", "out/q.xml",
                           "--junitxml", "out/pytest.xml", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=1, failed=1, skipped=2)
    data = json.loads((qc_project.path / "out" / "q.json").read_text())
    q2 = next(c for c in data["checks"] if c["variant"] == "Q2_K"
              and c["check"] == "perplexity_within(pct=3)")
    assert q2["verdict"] == "fail" and q2["decision"]["p_value"] < 0.05 and "PPL" in q2["message"]
    # the line of the test's first decorator: where its markers are
    assert q2["file"] == "test_json_and_junit_reports_carry_the_numbers.py" and q2["line"] == 3

    cases = [case for suite in JUnitXml.fromfile(str(qc_project.path / "out" / "q.xml"))
             for case in suite]
    assert len(cases) == 6  # 2 variants x 3 checks, the skipped baseline checks included
    failing = {c.name: c.result[0].message for c in cases
               if c.result and type(c.result[0]).__name__ == "Failure"}
    assert set(failing) == {"perplexity_within(pct=3)", "kl_divergence_at_most(value=0.05, stat='mean')"}
    skipped = [c for c in cases if c.result and type(c.result[0]).__name__ == "Skipped"]
    assert [c.name for c in skipped] == ["perplexity_within(pct=1, of='baseline')"] * 2
    assert "FAIL for Q2_K: PPL" in failing["perplexity_within(pct=3)"]
    assert "tolerance +3%" in failing["perplexity_within(pct=3)"]

    pytest_cases = [case for suite in JUnitXml.fromfile(str(qc_project.path / "out" / "pytest.xml"))
                    for case in suite]
    failed = next(c for c in pytest_cases if c.result and "Q2_K" in c.name and "gate" in c.name)
    shown = f"{failed.result[0].message}\n{failed.result[0].text}"
    assert "perplexity_within(pct=3) FAIL for Q2_K: PPL" in shown
    assert "kl_divergence_at_most(value=0.05, stat='mean') FAIL for Q2_K" in shown


def test_github_step_summary_and_annotations(qc_project: pytest.Pytester, run_both_ways: RunBothWays,
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    qc_project.makepyfile(SUITE)
    result = run_both_ways(qc_project)
    result.assert_outcomes(passed=1, failed=1, skipped=2)
    text = summary.read_text()
    # Q2_K fails both; the baseline checks are skipped (comparisons off), and counted
    assert text.startswith("### quantcheck: 6 checks: 2 passed, 2 failed, 2 skipped")
    assert "| variant | check | measured | against | change | over | p | verdict |" in text
    assert "| Q2_K | perplexity_within(pct=3) |" in text
    result.stdout.fnmatch_lines(["::error file=test_github_step_summary_and_annotations.py,line=3,"
                                 "title=quantcheck perplexity_within(pct=3) Q2_K::*FAIL for Q2_K*"])


def _verdicts(path: Path) -> list[tuple[str, str, str]]:
    data = json.loads(path.read_text())
    return sorted((c["variant"], c["check"], c["verdict"]) for c in data["checks"])


def test_same_verdicts_and_baselines_with_and_without_xdist(subprocess_project: pytest.Pytester) -> None:
    p = subprocess_project
    serial = p.runpytest_subprocess("--quant-json", "serial.json", "--quant-update-baseline",
                                    *XDIST_QUIET)
    serial.assert_outcomes(passed=3, failed=1)
    base_file = p.path / "baselines" / "base.quantcheck.json"
    serial_baseline = json.loads(base_file.read_text())
    base_file.unlink()
    parallel = p.runpytest_subprocess("-n", "2", "--quant-json", "parallel.json",
                                      "--quant-update-baseline", *XDIST_QUIET)
    parallel.assert_outcomes(passed=3, failed=1)
    parallel.stdout.fnmatch_lines(["*quantcheck summary*"])
    assert _verdicts(p.path / "serial.json") == _verdicts(p.path / "parallel.json")
    assert json.loads(base_file.read_text()) == serial_baseline
    compare = p.runpytest_subprocess("-n", "2", "--quant-baseline", *XDIST_QUIET)
    compare.assert_outcomes(passed=3, failed=1)


def test_tradeoff_plot_shows_every_variant(qc_project: pytest.Pytester,
                                           run_both_ways: RunBothWays) -> None:
    pytest.importorskip("matplotlib")
    qc_project.makepyfile(SUITE)
    run_both_ways(qc_project, "--quant-plot", "out/tradeoff.svg").assert_outcomes(
        passed=1, failed=1, skipped=2)
    svg = (qc_project.path / "out" / "tradeoff.svg").read_text()
    for name in ("Q8_0", "Q2_K", "base"):
        assert f">{name}<" in svg or name in svg
    assert "size against perplexity" in svg and "size against KL divergence" in svg


def test_plot_needs_a_known_format(qc_project: pytest.Pytester) -> None:
    # serial only: the option is checked in pytest_configure, before pytest-xdist starts workers
    qc_project.makepyfile(SUITE)
    result = qc_project.runpytest("--quant-plot", "out/tradeoff.pdf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-plot out/tradeoff.pdf: give a .png or .svg file name*"])


def test_markdown_report_file(qc_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    run_both_ways(qc_project, "--quant-markdown", "q.md").assert_outcomes(passed=1, failed=1, skipped=2)
    assert "| Q2_K | perplexity_within(pct=3) |" in (qc_project.path / "q.md").read_text()
