"""Forty damaged, truncated, hostile and non-GGUF files, given to the ``quantcheck`` command and to
the pytest plugin as users would: neither process may die by a signal, and each file must give
exactly one line of error that names it.

The files are built deterministically from the demo model. Most are refused by the header
validation before llama.cpp sees them; the last few pass it and are refused by llama.cpp itself
(an unknown architecture, a missing tensor, tensors out of order, ...), through the crash-isolated
first load. ``fuzz/fuzz_gguf.py`` runs the same mutations at random, thousands at a time.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
from gguf_mutations import header_fields, put

pytestmark = pytest.mark.real
U64 = (1 << 64) - 1


def hostile_files(seed: bytes) -> dict[str, bytes]:
    """name -> bytes, 40 files; the names are the pytest ids of the plugin run."""
    lay = header_fields(seed)
    end = lay.header_end

    def field(kind: str, owner: str = "") -> Callable[[int | float], bytes]:
        return lambda value: put(seed, lay.find(kind, owner), value)

    def value(key: str, text: bytes) -> bytes:  # a string value replaced by one as long
        at = lay.find("string_len", key).offset + 8
        return seed[:at] + text + seed[at + len(text) :]

    def duplicate_token() -> bytes:  # the first token spelled as the next one of its length
        entries = lay.of("element_len")
        for a, b in itertools.pairwise(entries[3:]):
            n = int(a.read(seed))
            if n == int(b.read(seed)) and n > 1:
                at = a.offset + 8
                return seed[:at] + seed[b.offset + 8 : b.offset + 8 + n] + seed[at + n :]
        raise AssertionError("no two neighbouring tokens of the same length")

    def two_offsets(a: str, b: str) -> bytes:
        oa, ob = lay.find("tensor_offset", a), lay.find("tensor_offset", b)
        return put(put(seed, oa, ob.read(seed)), ob, oa.read(seed))

    def rename(tensor: str, new: str) -> bytes:
        at = lay.find("name_len", tensor).offset + 8
        assert len(new) == len(tensor)
        return seed[:at] + new.encode() + seed[at + len(new) :]

    q = "blk.0.attn_q.weight"
    files = {
        # not GGUF at all
        "empty": b"",
        "text": b"this is not a model\n" * 10,
        "zip": b"PK\x03\x04" + bytes(60),
        "safetensors": (b"\x40" + bytes(7) + b'{"__metadata__":{}}').ljust(72, b" "),
        "magic-only": b"GGUF",
        "version-1": field("version")(1),
        "version-huge": field("version")(0xFFFFFFFF),
        # truncated
        "cut-6": seed[:6],
        "cut-in-metadata": seed[: end // 3],
        "cut-in-tensor-directory": seed[: end - 10],
        "cut-in-weights": seed[: len(seed) // 2],
        "cut-last-byte": seed[:-1],
        # counts and lengths that lie
        "tensor-count-max": field("n_tensors")(U64),
        "tensor-count-plus-one": field("n_tensors")(len(lay.of("name_len")) + 1),
        "kv-count-2-32": field("n_kv")(1 << 32),
        "kv-count-plus-one": field("n_kv")(len(lay.of("key_len")) + 1),
        "key-length-2-63": put(seed, lay.of("key_len")[0], 1 << 63),
        "string-length-2-40": field("string_len", "general.name")(1 << 40),
        "vocab-length-2-32-minus-1": field("array_len", "tokenizer.ggml.tokens")(0xFFFFFFFF),
        "scores-length-2-33": field("array_len", "tokenizer.ggml.scores")(1 << 33),
        "token-length-max": field("element_len", "tokenizer.ggml.tokens[7]")(U64),
        # types that do not exist
        "value-type-13": field("value_type", "llama.block_count")(13),
        "array-type-99": field("array_type", "tokenizer.ggml.scores")(99),
        "tensor-type-99": field("tensor_type", q)(99),
        # tensor directory entries that lie
        "n-dims-5": field("n_dims", q)(5),
        "n-dims-0": field("n_dims", q)(0),
        "dim-0": put(seed, lay.find("dim", q), 0),
        "dim-2-62": put(seed, lay.find("dim", q), 1 << 62),
        "offset-unaligned": field("tensor_offset", q)(int(lay.find("tensor_offset", q).read(seed)) + 1),
        "offset-overlap": field("tensor_offset", q)(lay.find("tensor_offset", "blk.0.attn_k.weight")
                                                    .read(seed)),
        "offset-2-40": field("tensor_offset", q)(1 << 40),
        # sound structure, but llama.cpp would abort the process on it (refused by validation)
        "weight-as-i32": field("tensor_type", "output.weight")(26),
        "norm-as-f16": field("tensor_type", "output_norm.weight")(1),
        "duplicate-token": duplicate_token(),
        "block-count-0": field("scalar", "llama.block_count")(0),
        "norm-epsilon-nan": field("scalar", "llama.attention.layer_norm_rms_epsilon")(float("nan")),
        # pass validation; llama.cpp refuses them itself, cleanly
        "unknown-architecture": value("general.architecture", b"llamb"),
        "tensors-out-of-order": two_offsets(q, "blk.0.attn_k.weight"),
        "tensor-missing": rename(q, "blk.0.attn_q.weighx"),
        "block-count-3": field("scalar", "llama.block_count")(3),
    }
    assert len(files) == 40
    return files


PASS_VALIDATION = {"unknown-architecture", "tensors-out-of-order", "tensor-missing", "block-count-3"}


@pytest.fixture(scope="module")
def hostile(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, data in hostile_files(demo_model.read_bytes()).items():
        paths[name] = folder / f"{name}.gguf"
        paths[name].write_bytes(data)
    return paths


def test_the_files_are_what_they_claim(hostile: dict[str, Path], demo_model: Path) -> None:
    """Each file is refused by validation, except the ones meant for llama.cpp to refuse."""
    from pytest_quantcheck.gguf_check import validate_gguf
    from pytest_quantcheck.gguf_file import GGUFError

    validate_gguf(demo_model)
    passed = set()
    for name, path in hostile.items():
        try:
            validate_gguf(path)
            passed.add(name)
        except GGUFError:
            pass
    assert passed == PASS_VALIDATION


def quantcheck_command() -> list[str]:
    script = Path(sys.executable).with_name("quantcheck")  # the console script, as installed
    return [str(script)] if script.exists() else [sys.executable, "-m", "pytest_quantcheck.cli"]


def test_the_command_gives_one_line_naming_the_file(hostile: dict[str, Path],
                                                     demo_text: Path) -> None:
    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*quantcheck_command(), "perplexity", str(path), "-f", str(demo_text),
                               "-c", "64", "--chunks", "1", "-t", "1"],
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(hostile, pool.map(run, hostile.values()), strict=True))
    for name, done in results.items():
        path = hostile[name]
        assert done.returncode == 2, (name, done.returncode, done.stderr[-2000:])  # no signal
        assert done.stdout == "", name
        assert done.stderr.count("\n") == 1, (name, done.stderr[-2000:])
        assert done.stderr.startswith(f"quantcheck: error: {path}: "), (name, done.stderr)


def test_the_plugin_gives_one_line_naming_the_file(hostile: dict[str, Path], demo_model: Path,
                                                   demo_text: Path, pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    variants = [str(p) for p in hostile.values()]
    pytester.makepyprojecttoml(
        f'[tool.quantcheck]\nmodel = "{demo_model}"\neval_text = "{demo_text}"\n'
        f"variants = {json.dumps(variants)}\nn_ctx = 64\nchunks = 1\nthreads = 1\n")
    # every test's failure text, as pytest reports it, in a file
    pytester.makeconftest(
        "import json, os\n\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.failed:\n"
        "        with open(os.environ['HOSTILE_LOG'], 'a') as f:\n"
        "            f.write(json.dumps([report.nodeid, report.when, report.longreprtext]) + '\\n')\n")
    pytester.makepyfile(
        "import pytest\n\n"
        "@pytest.mark.perplexity_at_most(1e9)\n"  # makes the plugin load each model
        "def test_release(quant_model):\n"
        "    pass\n")
    log = pytester.path / "failures.jsonl"
    monkeypatch.setenv("HOSTILE_LOG", str(log))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]  # no signal
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 40, outcomes
    assert "passed" not in outcomes
    failures = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(failures) == 40
    name_of = {str(path): name for name, path in hostile.items()}  # test ids are the variants
    by_name = {name_of[nodeid.split("[", 1)[1][:-1]]: (when, text)
               for nodeid, when, text in failures}
    assert set(by_name) == set(hostile)
    for name, (_, text) in by_name.items():
        assert text.count("\n") == 0, (name, text)
        assert str(hostile[name]) in text, (name, text)
    # refused by validation: the fixture fails at setup; refused by llama.cpp: the check fails
    assert {n for n, (when, _) in by_name.items() if when == "call"} == PASS_VALIDATION
