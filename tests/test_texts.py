"""Several evaluation texts: eval_text as a table of named texts, checks on one (text=) or on
their macro-average, baselines per text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck import stats
from pytest_quantcheck.config import ConfigError, Layer, merge


def test_eval_text_table_names_texts_and_the_first_is_the_default(tmp_path: Path) -> None:
    settings = merge([Layer("pyproject.toml", tmp_path, {
        "eval_text": {"prose": "p.txt", "code": "sub/c.txt"}})])
    assert settings.eval_text == (tmp_path / "p.txt").resolve()
    assert settings.eval_texts == {"prose": (tmp_path / "p.txt").resolve(),
                                   "code": (tmp_path / "sub" / "c.txt").resolve()}
    cli = merge([Layer("command line", tmp_path, {"eval_text": "a=x.txt,b=y.txt"})])
    assert list(cli.eval_texts) == ["a", "b"]
    assert merge([Layer("f", tmp_path, {"eval_text": "x.txt"})]).eval_texts == {}
    with pytest.raises(ConfigError, match=r"eval_text: text name 'macro': use letters"):
        merge([Layer("f", tmp_path, {"eval_text": {"macro": "x.txt"}})])


def test_macro_average_of_one_text_is_the_one_sample_test() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0.01, 0.02, 40)
    one = stats.macro_mean_at_most([x], 0.02, 0.05, "prove", "x")
    plain = stats.mean_at_most(x, 0.02, 0.05, "prove", "x")
    assert one.p_value == pytest.approx(plain.p_value, rel=1e-12)
    assert (one.low, one.high) == pytest.approx((plain.low, plain.high), rel=1e-12)


@pytest.mark.parametrize("mode", ["detect", "prove"])
def test_macro_average_keeps_false_alarms_within_alpha(mode: str) -> None:
    """Three texts of other lengths and spreads, their average exactly at the limit."""
    rng = np.random.default_rng(21 if mode == "detect" else 22)
    runs, limit, alarms = 2000, 0.03, 0
    for _ in range(runs):
        texts = [rng.normal(0.01, 0.01, 12), rng.normal(0.03, 0.04, 30),
                 rng.normal(0.05, 0.02, 8)]
        d = stats.macro_mean_at_most(texts, limit, 0.05, mode, "x")
        alarms += d.verdict == (stats.FAIL if mode == "detect" else stats.PASS)
    assert alarms / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


@pytest.fixture
def two_texts(qc_project: pytest.Pytester) -> pytest.Pytester:
    from fakes import word_text

    (qc_project.path / "code.txt").write_text(word_text(1500, seed=9) + "\n")
    toml = qc_project.path / "pyproject.toml"
    toml.write_text(toml.read_text().replace('eval_text = "eval.txt"',
                                             'eval_text = { prose = "eval.txt", code = "code.txt" }'))
    return qc_project


SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=5, text="code")
@pytest.mark.perplexity_within(pct=5, text="prose")
@pytest.mark.perplexity_within(pct=5, text="macro")
@pytest.mark.kl_divergence_at_most(0.05, text="code")
@pytest.mark.kl_divergence_at_most(0.05, text="macro")
@pytest.mark.top1_agreement_at_least(0.5, text="code")
def test_texts(quant_model):
    pass
"""


def test_checks_on_named_texts_and_their_macro_average(two_texts: pytest.Pytester) -> None:
    two_texts.makepyfile(SUITE)
    result = two_texts.runpytest("--quant-json", "r.json", "--quant-sequential", "false")
    result.assert_outcomes(passed=1, failed=1)
    checks = json.loads((two_texts.path / "r.json").read_text())["checks"]
    by = {(c["variant"], c["check"]): c for c in checks}
    for variant in ("Q8_0", "Q2_K"):
        per_text = [by[(variant, f"perplexity_within(pct=5, text='{t}')")] for t in
                    ("prose", "code")]
        macro = by[(variant, "perplexity_within(pct=5, text='macro')")]
        assert per_text[1]["metric"] == "PPL (code)" and macro["metric"] == "PPL (macro)"
        # the macro estimate is the mean of the texts' log-ratios, each text weighing the same
        assert math.log1p(macro["change"]) == pytest.approx(
            np.mean([math.log1p(c["change"]) for c in per_text]), rel=1e-9)
        assert "macro-average t-test over 2 texts" in macro["decision"]["test"]
        assert per_text[0]["change"] != per_text[1]["change"]  # two texts, two numbers
        kl = by[(variant, "kl_divergence_at_most(value=0.05, stat='mean', text='macro')")]
        one = by[(variant, "kl_divergence_at_most(value=0.05, stat='mean', text='code')")]
        assert kl["metric"] == "KLD mean (macro)" and one["metric"] == "KLD mean (code)"
    # the default text is the first named one: no check names it, the plain marker uses it
    two_texts.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pct=5)\n"
                         "@pytest.mark.perplexity_within(pct=5, text='prose')\n"
                         "def test_default(quant_model):\n    pass\n")
    result = two_texts.runpytest("--quant-json", "d.json", "--quant-sequential", "false")
    checks = json.loads((two_texts.path / "d.json").read_text())["checks"]
    pairs = {}
    for c in checks:
        pairs.setdefault(c["variant"], []).append(c["change"])
    assert all(a == b for a, b in pairs.values())


@pytest.mark.parametrize(("marker", "message"), [
    ("perplexity_within(pct=5, text='poetry')",
     "text 'poetry' is not in eval_text (prose, code); name it there"),
    ("kl_divergence_at_most(0.1, stat='p99', text='macro')",
     "text='macro' averages the mean KL divergence; use stat='mean' or one text"),
    ("top1_agreement_at_least(0.9, text='macro')",
     "text='macro' is for perplexity and the mean KL divergence; name one text"),
])
def test_bad_text_arguments_are_usage_errors(two_texts: pytest.Pytester, marker: str,
                                             message: str) -> None:
    two_texts.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\n"
                         "def test_x(quant_model):\n    pass\n")
    result = two_texts.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_baselines_keep_each_named_text(two_texts: pytest.Pytester) -> None:
    two_texts.makepyfile("import pytest\n\n"
                         "@pytest.mark.perplexity_within(pct=0.01, of='baseline', text='code')\n"
                         "@pytest.mark.perplexity_within(pct=0.01, of='baseline', text='macro')\n"
                         "def test_x(quant_model):\n    pass\n")
    two_texts.runpytest("--quant-update-baseline").assert_outcomes(passed=2)
    stored = json.loads(next((two_texts.path / "baselines").glob("*.json")).read_text())
    code = stored["records"]["Q2_K"]["texts"]["code"]
    assert len(code["chunk_nll"]) == code["n_chunks"] > 8  # every chunk, though decided early
    two_texts.runpytest("--quant-baseline").assert_outcomes(passed=2)
    with (two_texts.path / "code.txt").open("a") as f:
        f.write("one more line\n")
    result = two_texts.runpytest("--quant-baseline")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*baseline was made with a different text 'code' (*, now *);"
                                 " refresh it with --quant-update-baseline*"])


def test_a_malformed_text_list_names_the_item(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval_text: expected name=path,name=path; 'code' has"
                       r" no '='"):
        merge([Layer("command line", tmp_path, {"eval_text": "prose=a.txt,code"})])


def test_helpers_check_their_arguments_as_markers_do(two_texts: pytest.Pytester) -> None:
    two_texts.makepyfile(
        """
        import pytest
        from pytest_quantcheck.assertions import assert_kl_divergence_at_most
        from pytest_quantcheck.checks import CheckArgumentError

        def test_helper(quantize):
            with pytest.raises(CheckArgumentError, match="assert_kl_divergence_at_most: text='macro'"
                               " averages the mean KL divergence"):
                assert_kl_divergence_at_most(quantize("Q8_0"), 0.1, stat="p99", text="macro")
        """
    )
    two_texts.runpytest().assert_outcomes(passed=1)
