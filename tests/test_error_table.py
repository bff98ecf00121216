"""Every row of the documentation's error table (docs/reference/errors.md), produced for real and
matched against its text."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck import cache as cache_module
from pytest_quantcheck import cli as cli_module
from pytest_quantcheck.baseline import BaselineError, load
from pytest_quantcheck.cli import main
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import EvalTextError, ScoringProtocol
from pytest_quantcheck.gguf_file import write_gguf

from fakes import FakeBackend, write_fake_gguf

ERRORS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "errors.md"


def table() -> dict[str, str]:
    text = ERRORS_PAGE.read_text()
    body = text.split("<!-- error-table -->")[1].split("<!-- /error-table -->")[0]
    rows = {}
    for line in body.strip().splitlines()[2:]:
        label, shown = (cell.strip() for cell in line.strip("|").split("|", 1))
        rows[label] = shown.strip("`").replace("\\\\", "\\")
    return rows


def matches(pattern: str, message: str) -> bool:
    glob = re.sub(r"<[^>]+>", "*", pattern).replace("[", "[[]")
    return fnmatch.fnmatchcase(message, glob)


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.strip()


def small_gguf(path: Path) -> Path:
    write_gguf(path, {"general.architecture": "llama"},
               {"output.weight": np.ones((3, 32), np.float32)})
    return path


def mc_cut_short(path: Path) -> Path:
    from pytest_quantcheck.demo.task_sets import write_multiple_choice

    data = write_multiple_choice([("Which?", ["this", "that"], [1, 0])] * 3)
    path.write_bytes(data[:-9])
    return path


def text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


@pytest.fixture
def produce(tmp_path: Path, capsys: pytest.CaptureFixture[str], pytester: pytest.Pytester,
            monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[], str]]:
    # the fake backend, before a PYTHONPATH already set (a worktree's sources)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent), prepend=os.pathsep)
    eval_text = text(tmp_path / "eval.txt", "words " * 2000)

    def truncated() -> str:
        path = small_gguf(tmp_path / "t.gguf")
        path.write_bytes(path.read_bytes()[:30])
        return cli(capsys, "perplexity", path, "-f", eval_text)

    def hostile() -> str:
        path = small_gguf(tmp_path / "h.gguf")
        data = bytearray(path.read_bytes())
        at = data.index(b"output.weight") + len(b"output.weight") + 4 + 16 + 4
        struct.pack_into("<Q", data, at, 1 << 40)
        path.write_bytes(bytes(data))
        return cli(capsys, "perplexity", path, "-f", eval_text)

    def pk() -> str:
        path = tmp_path / "model.gguf"
        path.write_bytes(b"PK\x03\x04" + b"\0" * 40)
        return cli(capsys, "perplexity", path, "-f", eval_text)

    def too_short() -> str:
        model = write_fake_gguf(tmp_path / "fake.gguf")
        with pytest.raises(EvalTextError) as info:
            Engine(FakeBackend()).perplexity(model, text(tmp_path / "s.txt", "short"),
                                             ScoringProtocol(n_ctx=512))
        return str(info.value)

    def bad_setting() -> str:
        (pytester.path / "pyproject.toml").write_text("[tool.quantcheck]\nn_ctx = 511\n")
        pytester.makepyfile("def test_x():\n    pass\n")
        return pytester.runpytest_subprocess().stderr.lines[0]

    def bad_marker() -> str:
        (pytester.path / "base.gguf").write_bytes(small_gguf(tmp_path / "b.gguf").read_bytes())
        (pytester.path / "pyproject.toml").write_text('[tool.quantcheck]\nmodel = "base.gguf"\n')
        pytester.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pc=3)\n"
                            "def test_x(quant_model):\n    pass\n")
        return pytester.runpytest_subprocess().stderr.lines[0]

    def misspelt_marker() -> str:
        (pytester.path / "base.gguf").write_bytes(small_gguf(tmp_path / "b.gguf").read_bytes())
        (pytester.path / "pyproject.toml").write_text('[tool.quantcheck]\nmodel = "base.gguf"\n')
        pytester.makepyfile("import pytest\n\n@pytest.mark.perplexity_whithin(pct=3)\n"
                            "def test_x(quant_model):\n    pass\n")
        return pytester.runpytest_subprocess().stderr.lines[0]

    def of_no_model() -> str:
        (pytester.path / "base.gguf").write_bytes(small_gguf(tmp_path / "b.gguf").read_bytes())
        (pytester.path / "pyproject.toml").write_text('[tool.quantcheck]\nmodel = "base.gguf"\n')
        pytester.makepyfile("import pytest\n\n@pytest.mark.perplexity_within(pct=3, of='Q8_O')\n"
                            "def test_x(quant_model):\n    pass\n")
        return pytester.runpytest_subprocess().stderr.lines[0]

    def unknown_variant_setting() -> str:
        (pytester.path / "pyproject.toml").write_text(
            '[tool.quantcheck]\nvariants = ["Q8_0", "Q4_K_X"]\n')
        pytester.makepyfile("def test_x():\n    pass\n")
        return pytester.runpytest_subprocess().stderr.lines[0]

    def quantized_base() -> str:
        monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(cli_module, "default_backend", FakeBackend)
        q4 = write_fake_gguf(tmp_path / "q4.gguf", noise=0.3, ftype=15)  # a Q4_K_M file
        return cli(capsys, "quantize", q4, "Q2_K")

    def corrupt_baseline() -> str:
        path = text(tmp_path / "m.quantcheck.json", "{ not json")
        with pytest.raises(BaselineError) as info:
            load(path)
        return str(info.value)

    def other_protocol() -> str:
        from pytest_quantcheck.baseline import update

        keys = {"model_sha256": "a", "text_sha256": "b", "tokens_sha256": "c", "n_ctx": 256,
                "protocol": {}, "llama_cpp": "x"}
        path = tmp_path / "o.quantcheck.json"
        update(path, keys, {"Q8_0": {}})
        with pytest.raises(BaselineError) as info:
            load(path).record("Q8_0", {**keys, "n_ctx": 512}, ())
        return str(info.value)

    def unwritable() -> str:
        blocker = text(tmp_path / "not-a-dir", "")
        project = pytester
        (project.path / "base.gguf").write_bytes(write_fake_gguf(tmp_path / "f.gguf").read_bytes())
        (project.path / "eval.txt").write_text("words " * 600)
        (project.path / "pyproject.toml").write_text(
            f'[tool.quantcheck]\nmodel = "base.gguf"\neval_text = "eval.txt"\nn_ctx = 64\n'
            f'variants = ["base"]\nbaseline_dir = "{blocker}/baselines"\n')
        project.makeconftest("from fakes import FakeBackend\n\n"
                             "def pytest_quantcheck_make_backend(config):\n"
                             "    return FakeBackend()\n")
        project.makepyfile("import pytest\n\n@pytest.mark.perplexity_at_most(1e9)\n"
                           "def test_x(quant_model):\n    pass\n")
        result = project.runpytest_subprocess("--quant-update-baseline")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        return next(line for line in result.stdout.lines if "quantcheck: error:" in line)

    def cache_not_creatable() -> str:
        blocker = text(tmp_path / "cache-file", "")
        monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(blocker / "cache"))
        monkeypatch.setattr(cli_module, "default_backend", FakeBackend)
        return cli(capsys, "quantize", write_fake_gguf(tmp_path / "c.gguf"), "Q8_0")

    def cache_full() -> str:
        monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(cli_module, "default_backend", FakeBackend)

        def no_space(fd: int) -> None:  # where a full disk shows with delayed allocation
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(cache_module.os, "fsync", no_space)
        return cli(capsys, "quantize", write_fake_gguf(tmp_path / "d.gguf"), "Q8_0")

    def token_twice() -> str:
        path = tmp_path / "v.gguf"
        write_gguf(path, {"general.architecture": "llama", "tokenizer.ggml.tokens": ["a", "b", "a"]},
                   {"output.weight": np.ones((3, 32), np.float32)})
        return cli(capsys, "perplexity", path, "-f", eval_text)

    def newer_baseline() -> str:
        path = text(tmp_path / "n.quantcheck.json",
                    '{"schema": "pytest-quantcheck baseline", "schema_version": 4}')
        with pytest.raises(BaselineError) as info:
            load(path)
        return str(info.value)

    def speed_project() -> pytest.Pytester:
        project = pytester
        write_fake_gguf(project.path / "base.gguf")
        (project.path / "eval.txt").write_text("words " * 600)
        (project.path / "pyproject.toml").write_text(
            '[tool.quantcheck]\nmodel = "base.gguf"\neval_text = "eval.txt"\nn_ctx = 64\n'
            'variants = ["base"]\nbench_prompt = 16\nbench_gen = 4\n')
        project.makeconftest("from fakes import FakeBackend\n\n"
                             "def pytest_quantcheck_make_backend(config):\n"
                             "    return FakeBackend()\n")
        project.makepyfile("import pytest\n\n@pytest.mark.throughput_at_least(pct=-10)\n"
                           "def test_x(quant_model):\n    pass\n")
        return project

    def other_threads() -> str:
        project = speed_project()
        project.runpytest_subprocess("--quant-update-baseline", "--quant-threads", "2"
                                     ).assert_outcomes(passed=1)
        result = project.runpytest_subprocess("--quant-baseline", "-rs", "--quant-threads", "1")
        return next(line for line in result.stdout.lines if line.startswith("SKIPPED ["))

    def other_machine() -> str:
        import json

        project = speed_project()
        project.runpytest_subprocess("--quant-update-baseline").assert_outcomes(passed=1)
        path = project.path / "baselines" / "base.quantcheck.json"
        data = json.loads(path.read_text())
        data["records"]["base"]["machines"][0]["fingerprint"]["cpu"] = "Other CPU"
        path.write_text(json.dumps(data))
        result = project.runpytest_subprocess("--quant-baseline", "-rs")
        return next(line for line in result.stdout.lines if line.startswith("SKIPPED ["))

    def unmatched_pattern() -> str:
        from pytest_quantcheck.config import Recipe
        from pytest_quantcheck.variants import VariantError, recipe_options

        with pytest.raises(VariantError) as info:
            recipe_options(Recipe("typo", "Q4_K_M", tensor_types=(("ffn_dwn", "Q5_K"),)),
                           small_gguf(tmp_path / "r.gguf"))
        return str(info.value)

    def imatrix_of_another_model() -> str:
        monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(cli_module, "default_backend", FakeBackend)
        other = tmp_path / "other.imatrix"
        write_gguf(other, {"imatrix.chunk_count": 1},
                   {"blk.0.ffn_up.weight.in_sum2": np.ones(32, np.float32),
                    "blk.0.ffn_up.weight.counts": np.ones(1, np.float32)})
        return cli(capsys, "quantize", small_gguf(tmp_path / "i.gguf"), "Q4_K_M", "--imatrix",
                   other)

    def changed_text() -> str:
        from pytest_quantcheck.baseline import text_chunk_nll, update

        keys = {"model_sha256": "a", "text_sha256": "b", "tokens_sha256": "c", "n_ctx": 256,
                "protocol": {}, "llama_cpp": "x"}
        path = tmp_path / "t.quantcheck.json"
        update(path, keys, {"Q8_0": {"texts": {"code": {"text_sha256": "d" * 64,
                                                         "chunk_nll": [1.0, 2.0]}}}})
        with pytest.raises(BaselineError) as info:
            text_chunk_nll(load(path), "Q8_0", keys, (), "code", {"text_sha256": "e" * 64})
        return str(info.value)

    return {
        "recipe pattern that matches no tensor": unmatched_pattern,
        "importance matrix made for another model": imatrix_of_another_model,
        "named evaluation text changed since the baseline": changed_text,
        "cache directory that cannot be created": cache_not_creatable,
        "disk full while caching a variant": cache_full,
        "GGUF llama.cpp would abort on (a token twice)": token_twice,
        "baseline from a newer pytest-quantcheck": newer_baseline,
        "throughput baseline from another machine (skipped, not failed)": other_machine,
        "throughput baseline of another thread count (skipped, not failed)": other_threads,
        "misspelt marker": misspelt_marker,
        "`of=` that names no model": of_no_model,
        "unknown variant in the settings": unknown_variant_setting,
        "quantizing a quantized file": quantized_base,
        "missing model file": lambda: cli(capsys, "perplexity", tmp_path / "nope.gguf", "-f",
                                          eval_text),
        "not a GGUF file": pk,
        "truncated GGUF": truncated,
        "hostile GGUF (tensor outside the file)": hostile,
        "unknown variant": lambda: cli(capsys, "quantize", small_gguf(tmp_path / "q.gguf"),
                                       "Q4_K_X"),
        "empty evaluation text": lambda: cli(capsys, "perplexity", small_gguf(tmp_path / "e.gguf"),
                                             "-f", text(tmp_path / "empty.txt", "\n")),
        "evaluation text too short": too_short,
        "bad setting": bad_setting,
        "bad marker argument": bad_marker,
        "corrupt baseline": corrupt_baseline,
        "baseline of another model or protocol": other_protocol,
        "unwritable baseline directory": unwritable,
        "HellaSwag file whose lines are not 6 a task": lambda: cli(
            capsys, "hellaswag", small_gguf(tmp_path / "hs.gguf"), "-f",
            text(tmp_path / "hs.txt", "context\n1\na\nb\nc\n")),
        "multiple-choice file cut short": lambda: cli(
            capsys, "multiple-choice", small_gguf(tmp_path / "mc.gguf"), "-f",
            mc_cut_short(tmp_path / "mc.bin")),
    }


@pytest.mark.parametrize("label", list(table()))
def test_error_table_row(label: str, produce: dict[str, Callable[[], str]]) -> None:
    message = produce[label]()
    expected = table()[label]
    assert matches(expected, message), f"\ndocs: {expected}\nactual: {message}"


def test_every_row_has_a_scenario(produce: dict[str, Callable[[], str]]) -> None:
    assert set(table()) == set(produce)
