"""Settings from pyproject.toml, quantcheck.yaml, ini options and --quant-* flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RunBothWays
from pytest_quantcheck.config import ConfigError, Layer, merge, read_pyproject, read_yaml


def expect_settings(project: pytest.Pytester, *expected: object) -> None:
    # an assertion in the test, not a print: under -n 2 a worker's output is not shown
    project.makepyfile(test_show=(
        "def test_show(quant_session):\n"
        "    s = quant_session.settings\n"
        f"    assert (s.variants, s.n_ctx, s.alpha, s.mode, s.chunks, s.model.name) == {expected!r}\n"
    ))


def test_pyproject_then_yaml_then_ini_then_command_line(qc_project: pytest.Pytester,
                                                        run_both_ways: RunBothWays) -> None:
    expect_settings(qc_project, ("Q8_0", "Q2_K"), 64, 0.05, "detect", None, "base.gguf")
    run_both_ways(qc_project).assert_outcomes(passed=1)
    (qc_project.path / "quantcheck.yaml").write_text("alpha: 0.01\nvariants: [Q4_K_M]\n")
    qc_project.makefile(".ini", pytest="[pytest]\nquant_mode = prove\nquant_chunks = 5\n")
    expect_settings(qc_project, ("Q4_K_M",), 64, 0.01, "prove", 7, "base.gguf")
    run_both_ways(qc_project, "--quant-chunks", "7").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("pyproject", "message"),
    [
        ('[tool.quantcheck]\nvariant = ["Q8_0"]\n',
         "*pyproject.toml [[]tool.quantcheck[]]: variant: unknown key; allowed: model, variants,*"),
        ('[tool.quantcheck]\nn_ctx = 511\n',
         "*pyproject.toml [[]tool.quantcheck[]]: n_ctx: expected an even number >= 4, got 511"),
        ('[tool.quantcheck]\nmode = "strict"\n',
         "*mode: expected one of detect, prove; got 'strict'"),
        ('[tool.quantcheck]\nalpha = 2\n', "*alpha: expected a value in (0, 0.5], got 2.0"),
        ('[tool.quantcheck]\nvariants = []\n', "*variants: expected at least one variant*"),
        # pytest reads pyproject.toml first and names the file itself
        ('[tool.quantcheck\n', "*pyproject.toml: Expected ']' at the end of a table declaration*"),
    ],
)
def test_bad_settings_name_the_file_key_and_allowed_values(pytester: pytest.Pytester,
                                                           pyproject: str, message: str) -> None:
    # serial only, as the two tests below: settings are checked in pytest_configure, before
    # pytest-xdist starts any worker, so -n 2 takes the very same path
    (pytester.path / "pyproject.toml").write_text(pyproject)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_bad_command_line_value_names_the_flag_source(qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile("def test_x():\n    pass\n")
    result = qc_project.runpytest("--quant-alpha", "often")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: command line: alpha: expected a number, got 'often'"])


def test_yaml_is_read_safely(tmp_path: Path) -> None:
    path = tmp_path / "quantcheck.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)


def test_paths_are_relative_to_the_file_that_sets_them(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pyproject.toml").write_text(
        '[tool.quantcheck]\nmodel = "m/base.gguf"\nbaseline_dir = "bl"\n')
    layer = read_pyproject(tmp_path / "sub" / "pyproject.toml")
    assert layer is not None
    s = merge([layer])
    assert s.model == (tmp_path / "sub" / "m" / "base.gguf").resolve()
    assert s.baseline_dir == (tmp_path / "sub" / "bl").resolve()
    assert s.sources["model"].endswith("pyproject.toml [tool.quantcheck]")


def test_batch_must_fit_the_context() -> None:
    with pytest.raises(ConfigError, match="n_batch: 700 must be a multiple of n_ctx"):
        merge([Layer("x.yaml", Path("."), {"n_ctx": 512, "n_batch": 700})])


def test_baseline_ignore_accepts_only_known_keys() -> None:
    with pytest.raises(ConfigError, match="unknown model_hash; allowed: model_sha256"):
        merge([Layer("x.yaml", Path("."), {"baseline_ignore": ["model_hash"]})])
    s = merge([Layer("x.yaml", Path("."), {"baseline_ignore": "llama_cpp, n_ctx"})])
    assert s.baseline_ignore == ("llama_cpp", "n_ctx")


def test_missing_model_file_is_a_usage_error(qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile("def test_x():\n    pass\n")
    result = qc_project.runpytest("--quant-model", "missing.gguf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: command line: model: */missing.gguf is not a file; fix the path"])


def test_an_unknown_variant_stops_the_run_at_start_up(qc_project: pytest.Pytester) -> None:
    # serial only: settings are checked in pytest_configure, before pytest-xdist starts workers
    qc_project.makepyfile("import pytest\n\n@pytest.mark.perplexity_at_most(1e9)\n"
                          "def test_x(quant_model):\n    pass\n")
    result = qc_project.runpytest("--quant-variants", "Q8_0,Q4_K_X")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: command line: variants: unknown variant 'Q4_K_X', neither"
                                 " a file type, 'base', a variant table's name nor a .gguf file;"
                                 " did you mean Q4_K_?? types: F32, F16, BF16, Q8_0, *"])
    assert not (qc_project.path / "backend.log").exists()  # no model was made, Q8_0's neither
    (qc_project.path / "pyproject.toml").write_text(
        '[tool.quantcheck]\nmodel = "base.gguf"\nvariants = ["Q8_0", "gone.gguf"]\n'
        'reference = "F61"\n')
    result = qc_project.runpytest()
    result.stderr.fnmatch_lines(["ERROR: *pyproject.toml [[]tool.quantcheck[]]: reference: unknown"
                                 " variant 'F61', *; did you mean F16? types: *"])
    result = qc_project.runpytest("--quant-reference", "base")
    result.stderr.fnmatch_lines(["ERROR: *pyproject.toml [[]tool.quantcheck[]]: variants:"
                                 " */gone.gguf is not a file; fix the path"])


def test_a_quantized_base_stops_the_run_at_start_up(qc_project: pytest.Pytester) -> None:
    from fakes import write_fake_gguf

    write_fake_gguf(qc_project.path / "q4.gguf", noise=0.3, ftype=15)  # Q4_K_M
    qc_project.makepyfile("def test_x(quant_model):\n    pass\n")
    result = qc_project.runpytest("--quant-model", "q4.gguf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: command line: model: */q4.gguf: is Q4_K_M, a quantized"
                                 " file; quantize from an F32, F16 or BF16 GGUF (as"
                                 " convert_hf_to_gguf.py writes it)"])
    # nothing to quantize, nothing refused: a quantized file is a fine base for .gguf variants
    result = qc_project.runpytest("--quant-model", "q4.gguf", "--quant-variants",
                                  "base,one_pct.gguf")
    result.assert_outcomes(passed=2)
