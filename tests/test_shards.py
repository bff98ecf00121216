"""Runs split over machines: --quant-shard K/N, and `quantcheck merge` of the shards' reports
and baselines into what a single run writes."""

from __future__ import annotations

import json

import pytest

from pytest_quantcheck.cli import main

SUITE = """
import pytest
from pytest_quantcheck.assertions import assert_perplexity_at_most

@pytest.mark.perplexity_within(pct=3)
@pytest.mark.kl_divergence_at_most(1)
def test_quality(quant_model):
    pass

def test_helper(quantize):
    assert_perplexity_at_most(quantize("Q8_0"), 100)
"""
VARIANTS = ("--quant-variants", "Q8_0,Q2_K,one_pct.gguf")


@pytest.mark.parametrize("correction", ["none", "holm"])
def test_shards_merge_into_the_single_run(qc_project: pytest.Pytester, correction: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    qc_project.makepyfile(SUITE)
    common = (*VARIANTS, "--quant-correction", correction, "--quant-update-baseline")
    single = qc_project.runpytest(*common, "--quant-baseline=single", "--quant-json=single.json")
    single.assert_outcomes(passed=3, failed=1)  # Q2_K is 10% worse
    first = qc_project.runpytest(*common, "--quant-baseline=shards", "--quant-shard=1/2",
                                 "--quant-json=s1.json")
    first.assert_outcomes(passed=3)  # Q8_0 and one_pct (every 2nd from the 1st), test_helper
    first.stdout.fnmatch_lines(["quantcheck: *variants Q8_0, one_pct.gguf (shard 1/2),*"])
    second = qc_project.runpytest(*common, "--quant-baseline=shards", "--quant-shard=2/2",
                                  "--quant-json=s2.json")
    second.assert_outcomes(failed=1, deselected=1)  # Q2_K; test_helper ran in shard 1
    # (with Holm, each shard corrects over its own checks: merge corrects over all of them)

    p = qc_project.path
    code = main(["merge", str(p / "s1.json"), str(p / "s2.json"), "-o", str(p / "merged.json"),
                 "--baseline-dir", str(p / "merged"), "--junit", str(p / "m.xml"),
                 "--markdown", str(p / "m.md")])
    out = capsys.readouterr().out
    assert code == 1 and "6 of 7 checks passed (2 reports)" in out
    merged, alone = (json.loads((p / name).read_text()) for name in ("merged.json", "single.json"))
    assert merged["checks"] == alone["checks"]
    for key in ("settings", "baseline"):
        assert {**merged[key], "baseline_dir": ""} == {**alone[key], "baseline_dir": ""}
    file = "base.quantcheck.json"
    assert (json.loads((p / "merged" / file).read_text())
            == json.loads((p / "single" / file).read_text()))
    assert "perplexity_within(pct=3)" in (p / "m.xml").read_text()
    assert "6 of 7 checks passed" in (p / "m.md").read_text()


def test_merge_refuses_reports_of_different_runs(qc_project: pytest.Pytester,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    qc_project.makepyfile(SUITE)
    qc_project.runpytest(*VARIANTS, "--quant-shard=1/2", "--quant-json=a.json")
    qc_project.runpytest(*VARIANTS, "--quant-shard=2/2", "--quant-json=b.json",
                         "--quant-n-ctx", "32")
    p = qc_project.path
    assert main(["merge", str(p / "a.json"), str(p / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "b.json: made with another n_ctx than a.json (32, not 64); merge the shards of one run" in err
    assert main(["merge", str(p / "a.json"), str(p / "a.json")]) == 2
    assert "is also in a.json; give each shard's report once" in capsys.readouterr().err
    (p / "x.json").write_text("{}")
    assert main(["merge", str(p / "x.json")]) == 2
    assert "x.json: not a pytest-quantcheck report; give the file a pytest --quant-json run" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(qc_project: pytest.Pytester, bad: str) -> None:
    result = qc_project.runpytest(f"--quant-shard={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --quant-shard {bad}: expected K/N with 1 <= K <= N*"])
