"""Green means tested: every check's fate (passed, failed, inconclusive, skipped, error,
recorded) shows in every report and in the count line; an update run records, it does not judge
the baseline against itself; numbers say what they rest on; long steps show progress."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from junitparser import JUnitXml

from conftest import RunBothWays
from pytest_quantcheck import stats
from pytest_quantcheck.checks import SKIPPED, Outcome
from pytest_quantcheck.checks.outcome import count_line
from pytest_quantcheck.progress import LiveProgress
from pytest_quantcheck.report import over_common_chunks

MIXED = """
import pytest

@pytest.mark.perplexity_within(pct=30)
@pytest.mark.perplexity_within(pct=1, of="baseline")
def test_gate(quant_model):
    pass
"""


def test_a_skipped_check_beside_a_passing_one_shows_everywhere(
        qc_project: pytest.Pytester, run_both_ways: RunBothWays, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    qc_project.makepyfile(MIXED)
    result = run_both_ways(qc_project, "--quant-json", "q.json", "--quant-markdown", "q.md")
    result.assert_outcomes(passed=2)  # the test passes: what ran passed
    reason = "baseline comparisons are off; run with --quant-baseline"
    result.stdout.fnmatch_lines([  # annotations (at sessionfinish) each start a line
        "::warning file=test_a_skipped_check_beside_a_passing_one_shows_everywhere.py,line=3,"
        f"title=quantcheck perplexity_within(pct=1%2C of='baseline') Q2_K::*SKIPPED*{reason}",
        f"SKIPPED Q2_K perplexity_within(pct=1, of='baseline'): {reason}",
        "quantcheck: 4 checks: 2 passed, 2 skipped",
    ])
    for text in ((qc_project.path / "q.md").read_text(), summary.read_text()):
        assert text.startswith("### quantcheck: 4 checks: 2 passed, 2 skipped\n")
        assert f"- SKIPPED Q8_0 perplexity_within(pct=1, of='baseline'): {reason}" in text
    checks = json.loads((qc_project.path / "q.json").read_text())["checks"]
    assert sorted(c["verdict"] for c in checks) == ["pass", "pass", "skipped", "skipped"]
    skipped = next(c for c in checks if c["verdict"] == "skipped")
    assert skipped["reason"] == reason and skipped["measured"] is None
    assert skipped["line"] == 3 and skipped["nodeid"].endswith("test_gate[Q2_K]")


def test_a_test_whose_checks_are_all_skipped_is_reported_at_the_test(
        qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile("""
        import pytest

        @pytest.mark.perplexity_within(pct=1, of="baseline")
        def test_vs_release(quant_model):
            pass
        """)
    result = qc_project.runpytest("-rs")
    result.assert_outcomes(skipped=2)
    # at the user's test (where its markers are), not at the plugin line that skipped it
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] test_a_test_whose_checks_are_all_skipped_is_"
                                 "reported_at_the_test.py:3: *baseline comparisons are off*"])
    assert "plugin.py" not in result.stdout.str()


def test_a_check_in_error_is_in_the_summary_and_fails_the_test(
        qc_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(MIXED)
    # comparisons on, but no baseline was ever written: an error, not a pass and not a gap
    result = run_both_ways(qc_project, "--quant-baseline", "--quant-json", "q.json",
                           "--quant-junit", "q.xml")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["ERROR Q2_K perplexity_within(pct=1, of='baseline'): *no"
                                 " baseline*", "quantcheck: 4 checks: 2 passed, 2 error"])
    checks = json.loads((qc_project.path / "q.json").read_text())["checks"]
    assert sorted(c["verdict"] for c in checks) == ["error", "error", "pass", "pass"]
    cases = [case for suite in JUnitXml.fromfile(str(qc_project.path / "q.xml")) for case in suite]
    errors = [case.result[0] for case in cases if case.result]
    assert [type(e).__name__ for e in errors] == ["Error", "Error"]
    assert all("of='baseline') ERROR for" in (e.message or "") for e in errors)


def test_checks_of_a_test_that_failed_first_are_not_counted_as_run(
        qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile("""
        import pytest

        @pytest.mark.perplexity_within(pct=30)
        def test_gate(quant_model):
            assert quant_model.size_bytes < 0, "size"
        """)
    result = qc_project.runpytest("--quant-json", "q.json")
    result.assert_outcomes(failed=2)
    checks = json.loads((qc_project.path / "q.json").read_text())["checks"]
    assert [c["verdict"] for c in checks] == ["skipped", "skipped"]
    assert checks[0]["reason"] == "the test failed (AssertionError) before its checks ran"


def test_an_update_run_records_and_does_not_judge_the_baseline_against_itself(
        qc_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(MIXED)
    result = run_both_ways(qc_project, "--quant-update-baseline", "--quant-json", "q.json")
    result.assert_outcomes(passed=2)
    checks = json.loads((qc_project.path / "q.json").read_text())["checks"]
    recorded = [c for c in checks if "baseline" in c["check"]]
    assert [c["verdict"] for c in recorded] == ["recorded", "recorded"]
    for c in recorded:  # what was stored, and over how much: no comparison, no p-value
        assert c["compared"] is None and c["decision"] is None and c["change"] is None
        assert c["measured"] > 1 and c["n"] == c["n_available"] == 137 and c["unit"] == "chunks"
        assert "stored in" in c["reason"] and "not compared" in c["reason"]
    assert "PASS" not in "\n".join(line for line in result.stdout.lines if "baseline'" in line)
    result.stdout.fnmatch_lines(["quantcheck: 4 checks: 2 passed, 2 recorded"])


def test_an_update_run_says_how_many_throughput_runs_a_gate_needs(
        qc_project: pytest.Pytester) -> None:
    qc_project.makepyprojecttoml(
        '[tool.quantcheck]\nmodel = "base.gguf"\nvariants = ["Q8_0"]\neval_text = "eval.txt"\n'
        "n_ctx = 64\nn_batch = 256\nbench_prompt = 32\nbench_gen = 8\nbench_repetitions = 3\n"
        "threads = 2\n")
    qc_project.makepyfile("""
        import pytest

        @pytest.mark.throughput_at_least(pct=-50, of="baseline")
        def test_speed(quant_model):
            pass
        """)
    for runs, end in ((1, "and throughput gates need 3: record 2 more with"
                          " --quant-update-baseline"),
                      (2, "and throughput gates need 3: record 1 more with"
                          " --quant-update-baseline"),
                      (3, "enough for throughput gates (they need 3)")):
        result = qc_project.runpytest("--quant-update-baseline")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"RECORDED Q8_0 throughput_at_least(*): stored in *; not"
                                     f" compared; this machine's tg baseline holds {runs} run(s)"
                                     f" after this one, {end}"])


def test_numbers_say_what_they_rest_on(qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile("""
        import pytest

        @pytest.mark.perplexity_within(pct=30)
        @pytest.mark.size_at_most(bytes=10**9)
        def test_gate(quant_model):
            pass
        """)
    result = qc_project.runpytest("--quant-json", "q.json", "--quant-min-chunks", "4")
    result.assert_outcomes(passed=2)
    data = json.loads((qc_project.path / "q.json").read_text())
    for c in data["checks"]:
        if c["check"].startswith("perplexity"):  # decided in looks: n of n_available chunks
            assert c["unit"] == "chunks" and c["n_available"] == 137 and c["n"] < 137
            assert f"over {c['n']} of 137 chunks" in c["message"]
        else:  # a file's size rests on no chunks
            assert c["n"] is None
    for name, row in data["models"].items():
        assert row["perplexity"]["chunks"] == row["chunks_used"] > 0, name
    # the summary's "over" column shows it beside the value
    result.stdout.fnmatch_lines(["variant  check * over * verdict", "* of 137 chunks*PASS"])


def test_count_line_names_every_fate_in_order() -> None:
    def outcome(verdict: str) -> Outcome:
        return Outcome.undecided("c", "v", "", verdict, "why", "detect", 0.05)

    found = [outcome(v) for v in ("error", "skipped", "pass", "recorded", "pass", "fail",
                                  "inconclusive")]
    assert count_line(found) == ("2 passed, 1 failed, 1 inconclusive, 1 skipped, 1 error,"
                                 " 1 recorded")
    assert count_line([]) == "no checks"
    assert [o.blocking for o in found] == [True, False, False, False, False, True, True]


def test_accuracy_changes_are_in_points_and_others_relative() -> None:
    d = stats.Decision("fail", -0.07, -0.1, -0.04, 0.01, 400, "McNemar", unit="tasks")
    acc = Outcome("accuracy_within(task='hellaswag', points=2)", "Q2_K", "hellaswag accuracy",
                  "fail", 0.385, 0.455, 0.385 - 0.455, "drop <= 2 points", d, "detect", 0.05)
    assert acc.change_text() == "-7.00 points"
    assert "0.385 vs 0.455, -7.00 points over 400 tasks" in acc.message()
    ppl = Outcome("perplexity_within(pct=3)", "Q2_K", "PPL", "fail", 10.5, 10.0, 0.05, "+3%",
                  None, "detect", 0.05)
    assert ppl.change_text() == "+5.00%"
    skipped = Outcome.undecided("perplexity_within(pct=1)", "Q8_0", "", SKIPPED, "no GPU",
                                "detect", 0.05)
    assert skipped.message() == "perplexity_within(pct=1) SKIPPED for Q8_0: no GPU"
    assert Outcome.from_dict(json.loads(json.dumps(acc.to_dict()))) == acc


def test_plot_points_compare_models_over_the_same_chunks() -> None:
    rng = np.random.default_rng(3)
    base, early = rng.normal(4.0, 0.3, 64), rng.normal(4.1, 0.3, 8)
    points = {"base": {"bits_per_weight": 16.0, "chunk_nll": base.tolist()},
              "Q8_0": {"bits_per_weight": 8.5, "chunk_nll": early.tolist(),
                       "chunk_kld": [0.01] * 8}}
    out = over_common_chunks(points)
    assert out["base"]["ppl_chunks"] == out["Q8_0"]["ppl_chunks"] == 8
    assert out["base"]["ppl"] == pytest.approx(math.exp(base[:8].mean()), rel=1e-12)
    se = base[:8].std(ddof=1) / math.sqrt(8)
    assert out["base"]["ppl_high"] == pytest.approx(math.exp(base[:8].mean() + 1.959964 * se),
                                                    rel=1e-6)
    assert out["Q8_0"]["kld"] == pytest.approx(0.01) and "kld" not in out["base"]
    assert "chunk_nll" not in out["base"]


def test_live_progress_rewrites_one_line_at_most_every_interval() -> None:
    now = [0.0]
    shown: list[tuple[str, str]] = []
    live = LiveProgress(lambda line: shown.append(("start", line)),
                        lambda line: shown.append(("rewrite", line)),
                        lambda: shown.append(("end", "")), clock=lambda: now[0], every=1.0)
    report = live.step("perplexity of Q2_K, first 8 chunks")
    for done, t in ((2, 0.1), (4, 0.5), (6, 1.6), (8, 1.7)):
        now[0] = t
        report(done, 8)
    live.end()
    live.end()  # nothing open: nothing written
    assert shown == [("start", "quantcheck: perplexity of Q2_K, first 8 chunks: 2/8 chunks, 0 s"),
                     ("rewrite", "quantcheck: perplexity of Q2_K, first 8 chunks: 6/8 chunks, 2 s"),
                     ("rewrite", "quantcheck: perplexity of Q2_K, first 8 chunks: 8/8 chunks, 2 s"),
                     ("end", "")]


def test_steps_name_each_look(qc_project: pytest.Pytester) -> None:
    from pytest_quantcheck.config import Layer, merge
    from pytest_quantcheck.session import QuantSession

    from fakes import FakeBackend

    root = qc_project.path
    settings = merge([Layer("test", root, {"model": "nine_pct.gguf", "variants": ["base"],
                                          "eval_text": "eval.txt", "n_ctx": 64, "n_batch": 64})])
    qs = QuantSession(settings, FakeBackend)
    qs.models.store.step_note_after = 0.0  # every step noted, however fast
    model = qs.model("base")
    qs.models.perplexity(model, 4)
    qs.models.perplexity(model, 8)
    qs.models.perplexity(model, 8)  # held: no step
    looks = [s for s in qs.steps if s.startswith("perplexity of base")]
    assert [s.split(":")[0] for s in looks] == ["perplexity of base, chunks 1-4",
                                               "perplexity of base, chunks 5-8"]
