"""The quality markers, end to end through pytest, on the fake backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import RunBothWays

RunBoth = Callable[..., pytest.RunResult]
NO_MARK_WARNING = ("-W", "ignore::pytest.PytestUnknownMarkWarning")


def test_perplexity_within_passes_one_percent_and_fails_nine(qc_project: pytest.Pytester,
                                                             run_both_ways: RunBoth) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=3)
        def test_quality(quant_model):
            pass
        """
    )
    result = run_both_ways(qc_project, "--quant-variants", "one_pct.gguf,nine_pct.gguf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*test_quality?nine_pct.gguf?*",
        "*perplexity_within(pct=3) FAIL for nine_pct: PPL * vs * (base (reference)), +*% over * of"
        " * chunks; *% CI"
        " +*% to +*%; tolerance +3%; paired one-sided t-test on * chunk mean NLL differences,"
        " p = *, mode detect, alpha *; sequential: decided after * of * chunks (look * of *;"
        " alpha 0.05 spent over all looks)",
    ])
    assert "one_pct: PPL" not in result.stdout.str()


def test_variants_are_the_test_ids_and_metrics_run_once(qc_project: pytest.Pytester,
                                                        run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=50)
        @pytest.mark.perplexity_at_most(100)
        def test_a(quant_model):
            assert quant_model.size_bytes > 0

        @pytest.mark.perplexity_within(pct=50)
        def test_b(quant_model):
            pass
        """
    )
    result = run_both_ways(qc_project, "-rA")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    for test_id in ("test_a[Q8_0]", "test_a[Q2_K]", "test_b[Q2_K]"):
        assert f"PASSED test_variants_are_the_test_ids_and_metrics_run_once.py::{test_id}" in out
    loads = [x for x in (qc_project.path / "backend.log").read_text().splitlines()
             if x.startswith("load")]
    # Q8_0 and Q2_K are each evaluated once, however many checks ask (under xdist: on the one
    # worker that runs the variant's tests); the base once per process that compares with it
    variant_loads = [x for x in loads if x != "load base.gguf"]
    assert len(variant_loads) == len(set(variant_loads)) == 2
    assert 1 <= loads.count("load base.gguf") <= (2 if run_both_ways.xdist else 1)


def test_compare_with_another_variant(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=1, of="Q8_0")
        def test_vs_q8(quant_model):
            pass
        """
    )
    result = run_both_ways(qc_project)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL for Q2_K: PPL * vs * (Q8_0)*"])


def test_kl_divergence_and_top1_markers(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.kl_divergence_at_most(0.01)
        @pytest.mark.kl_divergence_at_most(0.5, stat="p99")
        @pytest.mark.top1_agreement_at_least(0.9)
        def test_close(quant_model):
            pass
        """
    )
    result = run_both_ways(qc_project)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "kl_divergence_at_most(value=0.01, stat='mean') FAIL for Q2_K: KLD mean" in out
    assert "chunk mean KLDs" in out
    assert "top1_agreement_at_least(fraction=0.9) FAIL for Q2_K" in out
    assert "Wilson interval" in out


def test_size_marker(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.size_at_most(bytes=1200)
        def test_small(quant_model):
            pass

        @pytest.mark.size_at_most(bpw=20)
        def test_bpw(quant_model):
            assert quant_model.bits_per_weight > 0
        """
    )
    result = run_both_ways(qc_project)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*size_at_most(bytes=1200) FAIL for Q8_0: size * vs 1200*"])


def test_prove_mode_can_be_inconclusive(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=4)
        def test_q(quant_model):
            pass
        """
    )
    result = run_both_ways(qc_project, "--quant-mode", "prove", "--quant-variants", "one_pct.gguf",
                           "--quant-chunks", "8")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE for one_pct*mode prove*chunks would likely decide*"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("perplexity_within(pc=3)", "perplexity_within got an unknown keyword 'pc'; allowed: pct, of"),
        ("perplexity_within()", "perplexity_within needs pct"),
        ("kl_divergence_at_most(0.1, stat='p42')", "stat must be one of mean, median, p90"),
        ("top1_agreement_at_least(1.5)", "fraction must be between 0.0 and 1.0, got 1.5"),
        ("size_at_most(bytes=1, bpw=2)", "size_at_most takes exactly one of bytes= or bpw="),
        ("perplexity_at_most('low')", "value must be a number, got 'low'"),
    ],
)
def test_bad_marker_arguments_are_usage_errors(qc_project: pytest.Pytester, marker: str,
                                               message: str) -> None:
    # The argument checks themselves, serially; test_a_bad_marker_argument_stops_the_run runs
    # one of them both ways.
    qc_project.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_x(quant_model):\n"
                          "    pass\n")
    result = qc_project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_x*{message}*"])


def assert_usage_error(result: pytest.RunResult, xdist: bool, line: str) -> None:
    """Serial: pytest stops with a usage error. Under pytest-xdist a worker cannot stop the run,
    so each affected test fails at setup with the same one line, and no INTERNALERROR."""
    if xdist:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines([line])
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    else:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([line])


def test_a_bad_marker_argument_stops_the_run(qc_project: pytest.Pytester,
                                             run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pc=3)\n"
                          "def test_x(quant_model):\n    pass\n")
    result = run_both_ways(qc_project)
    assert_usage_error(result, run_both_ways.xdist,
                       "*test_x*perplexity_within got an unknown keyword 'pc'*")


def test_marker_without_a_model_is_a_clear_error(qc_project: pytest.Pytester,
                                                 run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_at_most(10)\ndef test_x():\n"
                          "    pass\n")
    result = run_both_ways(qc_project)
    assert_usage_error(result, run_both_ways.xdist, "*test_x: @pytest.mark.perplexity_at_most needs"
                       " a model to check; add the quant_model fixture*")


def test_markers_are_registered_for_strict_markers(qc_project: pytest.Pytester,
                                                   run_both_ways: RunBoth) -> None:
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_at_most(1e9)\n"
                          "def test_x(quant_model):\n    pass\n")
    run_both_ways(qc_project, "--strict-markers").assert_outcomes(passed=2)
    result = qc_project.runpytest("--markers")  # pytest's own listing: no tests run, no workers
    result.stdout.fnmatch_lines(["*perplexity_within(pct, of=None, text=None)*"])


def test_summary_table_lists_every_check(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pct=3)\n"
                          "def test_x(quant_model):\n    pass\n")
    result = run_both_ways(qc_project)
    result.stdout.fnmatch_lines([
        "*quantcheck summary*",
        "variant*check*measured*against*change*p*verdict*",
        "Q2_K*perplexity_within(pct=3)*FAIL*",
        "Q8_0*perplexity_within(pct=3)*PASS*",
    ])


def test_failure_has_no_plugin_frames(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pct=3)\n"
                          "def test_x(quant_model):\n    pass\n")
    result = run_both_ways(qc_project, "--quant-variants", "Q2_K")
    result.assert_outcomes(failed=1)
    assert "pytest_quantcheck" not in result.stdout.str().split("short test summary")[0]


def test_fixtures_and_quantize_factory(qc_project: pytest.Pytester, run_both_ways: RunBoth) -> None:
    qc_project.makepyfile(
        """
        def test_fixtures(quant_reference, quant_eval_text, quantize):
            assert quant_reference.name == "base"
            assert quant_eval_text.name == "eval.txt"
            q = quantize("Q4_K_M")
            assert q.file_type == "Q4_K_M" and q.size_bytes < quant_reference.size_bytes
            assert q.perplexity().ppl > quant_reference.perplexity().ppl
            assert q.perplexity() is q.perplexity()
        """
    )
    run_both_ways(qc_project).assert_outcomes(passed=1)


def test_a_variant_with_quality_and_kl_checks_is_decoded_once(qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=50)
        @pytest.mark.perplexity_at_most(100)
        @pytest.mark.kl_divergence_at_most(5)
        @pytest.mark.top1_agreement_at_least(0.1)
        def test_quality(quant_model):
            pass
        """
    )
    result = qc_project.runpytest("--quant-json", "r.json")
    result.assert_outcomes(passed=2)
    loads = [x for x in (qc_project.path / "backend.log").read_text().splitlines()
             if x.startswith("load")]
    # the base once (its log-probs, which give its perplexity), each variant once (its KL pass,
    # which gives its perplexity)
    assert len(loads) == len(set(loads)) == 3, loads


def test_perplexity_from_the_kl_pass_equals_a_perplexity_run(qc_project: pytest.Pytester) -> None:
    import json

    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=50)
        @pytest.mark.kl_divergence_at_most(5)
        def test_quality(quant_model):
            pass
        """
    )
    qc_project.runpytest("--quant-json", "with_kl.json").assert_outcomes(passed=2)
    qc_project.makepyfile(
        """
        import pytest

        @pytest.mark.perplexity_within(pct=50)
        def test_quality(quant_model):
            pass
        """
    )
    qc_project.runpytest("--quant-json", "plain.json").assert_outcomes(passed=2)

    def ppl_checks(name: str) -> list[tuple[float, float | None, float]]:
        data = json.loads((qc_project.path / name).read_text())
        return [(c["measured"], c["compared"], c["decision"]["p_value"]) for c in data["checks"]
                if c["metric"] == "PPL"]

    assert ppl_checks("with_kl.json") == ppl_checks("plain.json")


def test_two_variant_files_with_one_name_are_refused(qc_project: pytest.Pytester) -> None:
    from fakes import write_fake_gguf

    for folder, noise in (("a", 0.0), ("b", 0.6)):
        (qc_project.path / folder).mkdir()
        write_fake_gguf(qc_project.path / folder / "model.gguf", noise=noise)
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pct=3)\n"
                          "def test_x(quant_model):\n    pass\n")
    result = qc_project.runpytest("--quant-variants", "a/model.gguf,b/model.gguf")
    result.assert_outcomes(passed=1, errors=1)  # never two files' numbers under one name
    result.stdout.fnmatch_lines(["*variants 'a/model.gguf' and 'b/model.gguf' are both named"
                                 " 'model' (a .gguf variant is named after its file name);"
                                 " rename one of the files*"])


def test_variant_paths_are_relative_to_the_settings_file(qc_project: pytest.Pytester) -> None:
    project = qc_project.path / "proj"
    project.mkdir()
    for name in ("base.gguf", "one_pct.gguf", "eval.txt", "pyproject.toml", "conftest.py"):
        (qc_project.path / name).rename(project / name)
    (project / "pyproject.toml").write_text(
        '[tool.quantcheck]\nmodel = "base.gguf"\nvariants = ["one_pct.gguf"]\n'
        'eval_text = "eval.txt"\nn_ctx = 64\nn_batch = 256\n')
    (project / "test_x.py").write_text("import pytest\n\n@pytest.mark.perplexity_within(pct=3)\n"
                                       "def test_x(quant_model):\n    pass\n")
    result = qc_project.runpytest("proj")  # run from the parent folder
    result.assert_outcomes(passed=1)


def test_check_labels_print_sizes_in_full() -> None:
    from pytest_quantcheck.checks import parse

    assert parse("size_at_most", (), {"bytes": 1431360}).label == "size_at_most(bytes=1431360)"
    assert parse("size_at_most", (), {"bpw": 4.5}).label == "size_at_most(bpw=4.5)"


def test_a_misspelt_marker_stops_the_run(qc_project: pytest.Pytester,
                                         run_both_ways: RunBothWays) -> None:
    # Without --strict-markers pytest only warns of an unknown marker, and the gate never runs
    # (the warning is silenced here: in-process runs inherit this suite's filterwarnings=error).
    qc_project.makepyfile(test_typo="import pytest\n\n@pytest.mark.perplexity_whithin(pct=3)\n"
                                    "def test_x(quant_model):\n    pass\n")
    result = run_both_ways(qc_project, *NO_MARK_WARNING)
    assert_usage_error(result, run_both_ways.xdist,
                       "*test_typo.py::test_x[[]Q8_0[]]: unknown marker"
                       " @pytest.mark.perplexity_whithin; did you mean perplexity_within? (a"
                       " misspelt check never runs)*")
    assert not (qc_project.path / "backend.log").exists()  # stopped before any model was made


def test_only_names_near_a_check_are_taken_for_typos(qc_project: pytest.Pytester) -> None:
    # serial only: what is tested is which names count as typos (the stop itself: above)
    qc_project.makeini("[pytest]\nmarkers =\n    perplexity_withn: another plugin's marker\n")
    qc_project.makepyfile("import pytest\n\n@pytest.mark.slow\n@pytest.mark.perplexity_withn\n"
                          "@pytest.mark.Size_at_most(bpw=64)\n"
                          "def test_x(quant_model):\n    pass\n")
    result = qc_project.runpytest(*NO_MARK_WARNING)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # a case slip is a slip too
    result.stderr.fnmatch_lines(["*test_x*unknown marker @pytest.mark.Size_at_most; did you mean"
                                 " size_at_most?*"])
    qc_project.makepyfile("import pytest\n\n@pytest.mark.slow\n@pytest.mark.perplexity_withn\n"
                          "def test_x(quant_model):\n    pass\n")
    qc_project.runpytest(*NO_MARK_WARNING).assert_outcomes(passed=2)


def test_an_of_that_names_no_model_stops_the_run(qc_project: pytest.Pytester,
                                                 run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(test_of="import pytest\n\n"
                                  "@pytest.mark.perplexity_within(pct=3, of='Q8_O')\n"
                                  "def test_x(quant_model):\n    pass\n")
    result = run_both_ways(qc_project)
    assert_usage_error(result, run_both_ways.xdist,
                       "*test_of.py::test_x[[]Q8_0[]]: perplexity_within(pct=3, of='Q8_O'):"
                       " of='Q8_O' names no model: not a variant (Q8_0, Q2_K), 'base', 'baseline',"
                       " a file type nor an existing .gguf file; did you mean 'Q8_0'?*")
    assert not (qc_project.path / "backend.log").exists()
    qc_project.makepyfile(test_of="import pytest\n\n"
                                  "@pytest.mark.kl_divergence_at_most(1, of='gone.gguf')\n"
                                  "def test_x(quant_model):\n    pass\n")
    assert_usage_error(run_both_ways(qc_project), run_both_ways.xdist,
                       "*test_x*of='gone.gguf': */gone.gguf is not a file; fix the path*")


def test_an_of_file_type_outside_the_variants_is_built_and_said(
        qc_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    # Q4_K_M, named by of= only, is measured for the comparison and not checked itself; the
    # summary says so, so that a gate never widens its work unseen.
    qc_project.makepyfile(test_of="import pytest\n\n"
                                  "@pytest.mark.perplexity_within(pct=50, of='Q4_K_M')\n"
                                  "def test_x(quant_model):\n    pass\n")
    result = run_both_ways(qc_project)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "quantcheck: notice: Q4_K_M is not in variants; it is built from the base for the"
        " comparison of test_of.py::test_x[[]Q8_0[]] (perplexity_within(pct=50, of='Q4_K_M')),"
        " and not checked itself"])
    assert result.stdout.str().count("notice: Q4_K_M is not in variants") == 1
