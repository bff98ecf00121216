"""The task markers and helpers, end to end through pytest, on the fake backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import RunBothWays


def _hellaswag(n: int, seed: int = 11) -> str:
    """Tasks the fake byte-bigram model gets mostly right (80 %; its Q2_K flips 10 %): a passage
    of its corpus's words, the real next two words, and three two-word endings from elsewhere
    with one letter replaced."""
    from fakes import word_text

    rng = np.random.default_rng(seed)
    words = word_text(3000, seed=seed).split()
    lines = []
    for _ in range(n):
        start, gold = int(rng.integers(0, 2900)), int(rng.integers(0, 4))
        endings = []
        for _ in range(3):
            at = int(rng.integers(0, 2900))
            letters = list(" ".join(words[at: at + 2]))
            k = int(rng.integers(0, len(letters)))
            if letters[k] != " ":
                letters[k] = str(rng.choice(list("abcdefghijklmnopqrstuvwxyz")))
            endings.append("".join(letters))
        endings.insert(gold, " ".join(words[start + 6: start + 8]))
        lines += [" ".join(words[start: start + 6]), str(gold), *endings]
    return "\n".join(lines) + "\n"


@pytest.fixture
def task_project(qc_project: pytest.Pytester) -> pytest.Pytester:
    (qc_project.path / "hs.txt").write_text(_hellaswag(120))
    text = (qc_project.path / "pyproject.toml").read_text()
    (qc_project.path / "pyproject.toml").write_text(
        text + '\n[tool.quantcheck.tasks]\nhellaswag = "hs.txt"\n')
    return qc_project


def test_task_markers_pass_and_fail(task_project: pytest.Pytester,
                                    run_both_ways: RunBothWays) -> None:
    task_project.makepyfile(
        """
        import pytest

        @pytest.mark.accuracy_at_least("hellaswag", 0.5)
        @pytest.mark.accuracy_within("hellaswag", points=5)
        @pytest.mark.flips_at_most("hellaswag", fraction=0.2)
        def test_tasks(quant_model):
            pass

        @pytest.mark.accuracy_at_least("hellaswag", 0.999)
        def test_perfect(quant_model):
            pass
        """
    )
    result = run_both_ways(task_project, "--quant-json", "report.json")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*accuracy_at_least(task='hellaswag', value=0.999) FAIL for Q8_0: hellaswag accuracy *"
        " vs 0.999 (limit) over 120 tasks; 90% CI *% to *%; tolerance >= 99.90%;"
        " exact binomial test on * right"
        " answers in 120 tasks, p = *",
    ])
    outcomes = json.loads((task_project.path / "report.json").read_text())["checks"]
    within = {o["variant"]: o for o in outcomes if o["check"].startswith("accuracy_within")}
    assert within["Q2_K"]["verdict"] == "pass" and within["Q8_0"]["verdict"] == "pass"
    q2 = within["Q2_K"]
    assert "Tango's paired score test" in q2["decision"]["test"]
    assert q2["change"] == pytest.approx(q2["measured"] - q2["compared"])
    assert "answers flipped against base (reference)" in q2["note"]
    assert "; 90% CI a drop of " in q2["message"] and " points; tolerance drop <= 5 points" in (
        q2["message"])


def test_comparison_with_another_variant_and_a_helper(task_project: pytest.Pytester) -> None:
    task_project.makepyfile(
        """
        import pytest
        from pytest_quantcheck.assertions import assert_flips_at_most

        @pytest.mark.flips_at_most("hellaswag", fraction=0.5, of="Q8_0")
        def test_vs_q8(quant_model):
            pass

        def test_helper(quantize):
            q8, q2 = quantize("Q8_0"), quantize("Q2_K")
            outcome = assert_flips_at_most(q2, q8, task="hellaswag", fraction=0.5)
            assert outcome.against == "Q8_0"
            same = assert_flips_at_most(q8, q8, task="hellaswag", fraction=0.0)
            assert same.measured == 0.0 and "0 of 120 answers flipped against Q8_0" in same.note
        """
    )
    result = task_project.runpytest("-rA", "--quant-variants", "Q2_K")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*Q2_K*flips_at_most(task='hellaswag', fraction=0.5, of='Q8_0')*"])


def test_baseline_keeps_answers_and_pairs_with_them(task_project: pytest.Pytester) -> None:
    task_project.makepyfile(
        """
        import pytest

        @pytest.mark.accuracy_within("hellaswag", points=0, of="baseline")
        @pytest.mark.flips_at_most("hellaswag", fraction=0.0, of="baseline")
        def test_tasks(quant_model):
            pass
        """
    )
    task_project.runpytest("--quant-update-baseline").assert_outcomes(passed=2)
    stored = json.loads(next((task_project.path / "baselines").glob("*.json")).read_text())
    entry = stored["records"]["Q2_K"]["tasks"]["hellaswag"]
    assert entry["n_tasks"] == 120 and entry["mode"] == "hellaswag" and entry["correct"]
    result = task_project.runpytest("--quant-baseline", "--quant-json", "report.json")
    result.assert_outcomes(passed=2)
    checks = json.loads((task_project.path / "report.json").read_text())["checks"]
    flips = next(o for o in checks if o["variant"] == "Q2_K" and o["check"].startswith("flips"))
    assert flips["note"].startswith("0 of 120 answers flipped against baseline")
    # another task selection cannot be paired with the stored answers
    result = task_project.runpytest("--quant-baseline", "--quant-task-limit", "60")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*scored other tasks (another file or task limit), so answers"
                                 " cannot be paired; record it again with"
                                 " --quant-update-baseline*"])


def test_unknown_task_set_is_a_usage_error(task_project: pytest.Pytester) -> None:
    task_project.makepyfile(
        """
        import pytest

        @pytest.mark.accuracy_at_least("mmlu", 0.5)
        def test_tasks(quant_model):
            pass
        """
    )
    result = task_project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("accuracy_at_least(task='mmlu', value=0.5) task 'mmlu' is not in the tasks setting"
            " (hellaswag); add it under [tool.quantcheck.tasks]") in result.stderr.str()


def test_bad_task_file_fails_the_check_in_one_line(task_project: pytest.Pytester) -> None:
    (task_project.path / "hs.txt").write_text("context\n9\na\nb\nc\nd\n")
    task_project.makepyfile(
        """
        import pytest

        @pytest.mark.accuracy_at_least("hellaswag", 0.5)
        def test_tasks(quant_model):
            pass
        """
    )
    result = task_project.runpytest("--quant-variants", "Q8_0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*accuracy_at_least(task='hellaswag', value=0.5) ERROR for Q8_0:"
                                 " *hs.txt:2: task 1's gold ending b'9' is not 0, 1, 2 or 3;"
                                 " fix that line*"])


def test_missing_task_file_is_a_settings_error(qc_project: pytest.Pytester) -> None:
    text = (qc_project.path / "pyproject.toml").read_text()
    (qc_project.path / "pyproject.toml").write_text(
        text + '\n[tool.quantcheck.tasks]\narc = {file = "arc.bin", mode = "multiple-choice"}\n')
    qc_project.makepyfile("def test_nothing():\n    pass\n")
    result = qc_project.runpytest()
    assert result.ret != 0
    assert "pyproject.toml [tool.quantcheck]: tasks.arc: " in result.stderr.str()
    assert "arc.bin is not a file; fix the path" in result.stderr.str()


def test_task_checks_are_decided_in_looks(task_project: pytest.Pytester) -> None:
    task_project.makepyfile(
        """
        import pytest

        @pytest.mark.accuracy_at_least("hellaswag", 0.3)
        @pytest.mark.flips_at_most("hellaswag", fraction=0.9)
        def test_clear(quant_model):
            pass
        """
    )
    result = task_project.runpytest("--quant-min-tasks", "40", "--quant-json", "report.json",
                                    "--quant-update-baseline")
    result.assert_outcomes(passed=2)
    checks = json.loads((task_project.path / "report.json").read_text())["checks"]
    assert len(checks) == 4
    for outcome in checks:  # 80 % right and about 10 % flipped: settled by the first look
        assert outcome["verdict"] == "pass" and outcome["decision"]["n"] == 40
        assert "sequential: decided after 40 of 120 tasks (look 1 of 2;" in outcome["note"]
    # the baseline holds every task all the same: a look's stop is no excuse for a short record
    stored = json.loads(next((task_project.path / "baselines").glob("*.json")).read_text())
    assert stored["records"]["Q2_K"]["tasks"]["hellaswag"]["n_tasks"] == 120
    # a fixed-length run decides on all of them, taking the answers from the cache
    result = task_project.runpytest("--quant-min-tasks", "40", "--quant-json", "report.json",
                                    "--quant-sequential", "false")
    result.assert_outcomes(passed=2)
    report = json.loads((task_project.path / "report.json").read_text())
    assert {o["decision"]["n"] for o in report["checks"]} == {120}
    assert report["models"]["Q2_K"]["tasks_scored"] == 0
    assert report["models"]["Q2_K"]["tasks_from_cache"] == 120
    result.stdout.fnmatch_lines(["quantcheck: results from the cache: *Q2_K (120 task answers)*"])
