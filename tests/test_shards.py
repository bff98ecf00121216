"""Runs split over machines: --quant-shard K/N, and `quantcheck merge` of the shards' reports
and baselines into what a single run writes."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert code == 1 and "7 checks: 6 passed, 1 failed (2 reports)" in out
    merged, alone = (json.loads((p / name).read_text()) for name in ("merged.json", "single.json"))
    assert merged["checks"] == alone["checks"]
    for key in ("settings", "baseline"):
        assert {**merged[key], "baseline_dir": ""} == {**alone[key], "baseline_dir": ""}
    file = "base.quantcheck.json"
    assert (json.loads((p / "merged" / file).read_text())
            == json.loads((p / "single" / file).read_text()))
    assert "perplexity_within(pct=3)" in (p / "m.xml").read_text()
    assert "7 checks: 6 passed, 1 failed" in (p / "m.md").read_text()


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


def test_merge_keeps_every_shards_sections_of_one_model(tmp_path: Path) -> None:
    """The reference is measured by every shard: one shard scored its tasks, another a named
    text. The merged baseline keeps both, as the single run's (and an xdist run's) does."""
    from pytest_quantcheck import baseline, report

    keys = {"model_sha256": "a", "text_sha256": "b", "tokens_sha256": "c", "n_ctx": 64,
            "protocol": {}, "llama_cpp": "x"}
    ppl = {"ppl": 10.0, "chunk_nll": [2.3, 2.31]}
    shard_records = [
        {"base": {"file_type": "F32", "size_bytes": 10, "bits_per_weight": 32.0, "ppl": ppl,
                  "tasks": {"hellaswag": {"correct": "AQ==", "n": 8}}},
         "Q8_0": {"file_type": "Q8_0", "size_bytes": 4, "bits_per_weight": 8.5, "ppl": ppl}},
        {"base": {"file_type": "F32", "size_bytes": 10, "bits_per_weight": 32.0, "ppl": ppl,
                  "texts": {"code": {"text_sha256": "d", "ppl": ppl}}},
         "Q2_K": {"file_type": "Q2_K", "size_bytes": 2, "bits_per_weight": 2.6, "ppl": ppl}},
    ]
    settings = {"baseline_dir": str(tmp_path / "unused"), "baseline_runs": 10}
    for i, records in enumerate(shard_records, 1):
        (tmp_path / f"s{i}.json").write_text(report.to_json(
            [], {**settings, "shard": f"{i}/2"},
            {"file": "base.quantcheck.json", "keys": keys, "records": records}))
    assert main(["merge", str(tmp_path / "s1.json"), str(tmp_path / "s2.json"),
                 "--baseline-dir", str(tmp_path / "merged")]) == 0
    merged = baseline.load(tmp_path / "merged" / "base.quantcheck.json")
    assert set(merged.records) == {"base", "Q8_0", "Q2_K"}
    assert set(merged.records["base"]["tasks"]) == {"hellaswag"}
    assert set(merged.records["base"]["texts"]) == {"code"}
    # what a single run holding both sections writes
    baseline.update(tmp_path / "single" / "base.quantcheck.json", keys,
                    {**shard_records[0], **shard_records[1],
                     "base": {**shard_records[0]["base"], **shard_records[1]["base"]}})
    single = baseline.load(tmp_path / "single" / "base.quantcheck.json")
    assert merged.records == single.records
